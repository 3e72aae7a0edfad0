"""Data-parallel training: the same SentenceTransformerTrainer on N processes under ``torchrun``.

``train.launcher: torchrun`` makes :func:`train` write a spec (settings and paths as JSON, the examples and
dataset pickled beside it) and start ``python -m torch.distributed.run --nproc-per-node N`` on this module;
every process rebuilds the trainer with :func:`denseflow.model.training.trainer.train_bi_encoder`, and the
Trainer (through accelerate) wraps the model in DistributedDataParallel: gloo on CPUs, NCCL on GPUs.

``train.batch_size`` stays the *global* batch: each process takes ``batch_size / N`` rows per step, and the
MNRL / CachedMNRL loss gathers every process's embeddings (``gather_across_devices``), so each query still
meets the whole global batch as in-batch negatives. The loss and gradients then equal one process's at the
same global batch (up to float summation order; dropout draws differ per process).

Across nodes the entry point is the same module, started by ``torchrun`` on each node with a rendezvous
(see the README): ``torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500
-m denseflow.model.training.distributed SPEC.json``, with the spec and output folder on shared storage.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from denseflow.model.config import TrainConfig
from denseflow.model.data.beir import Dataset
from denseflow.model.mining.negatives import TrainExample

SPEC_FILE = "spec.json"
INPUTS_FILE = "inputs.pkl"
RESULT_FILE = "result.json"


def world_size() -> int:
    """Processes in this training run: ``WORLD_SIZE`` as torchrun sets it, 1 when not launched by it."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def per_process_batch_size(global_batch_size: int) -> int:
    """Rows each process takes per step so that all of them together make the configured global batch."""
    processes = world_size()
    if global_batch_size % processes:
        raise ValueError(f"train.batch_size {global_batch_size} is not divisible by {processes} processes")
    return global_batch_size // processes


def write_spec(
    examples: list[TrainExample],
    data: Dataset,
    settings: TrainConfig,
    output_dir: Path,
    dev_split: str | None = None,
) -> Path:
    """The spec every process reads: JSON settings and paths, with the (large) inputs pickled beside it."""
    folder = Path(output_dir) / "distributed"
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / INPUTS_FILE).open("wb") as out:
        pickle.dump({"examples": examples, "data": data}, out)
    spec = {
        "settings": settings.model_dump(mode="json"),
        "output_dir": str(Path(output_dir).resolve()),
        "dev_split": dev_split,
        "inputs": str((folder / INPUTS_FILE).resolve()),
        "result": str((folder / RESULT_FILE).resolve()),
    }
    path = folder / SPEC_FILE
    path.write_text(json.dumps(spec, indent=2), encoding="utf-8")
    return path


def torchrun_command(spec: Path, nproc_per_node: int) -> list[str]:
    """One node, N processes: ``--standalone`` picks a free rendezvous port on localhost."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes",
        "1",
        "--nproc-per-node",
        str(nproc_per_node),
        "-m",
        "denseflow.model.training.distributed",
        str(spec),
    ]


def launch(
    examples: list[TrainExample],
    data: Dataset,
    settings: TrainConfig,
    output_dir: Path,
    dev_split: str | None = None,
    threads_per_process: int | None = None,
) -> Any:
    """Run training on ``settings.nproc_per_node`` local processes under torchrun; the rank-0 process's result."""
    from denseflow.model.training.trainer import TrainResult

    nproc = settings.nproc_per_node
    if settings.batch_size % nproc:
        raise ValueError(f"train.batch_size {settings.batch_size} is not divisible by nproc_per_node {nproc}")
    spec = write_spec(examples, data, settings, output_dir, dev_split)
    result_path = Path(json.loads(spec.read_text(encoding="utf-8"))["result"])
    result_path.unlink(missing_ok=True)
    # N processes share the cores: without this each would start one thread per core and oversubscribe them.
    threads = threads_per_process or max(1, (os.cpu_count() or 1) // nproc)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    subprocess.run(torchrun_command(spec, nproc), check=True, env=env)
    row = json.loads(result_path.read_text(encoding="utf-8"))
    row.pop("median_step_seconds", None)
    row["model_dir"] = Path(row["model_dir"])
    row["loss_history"] = [tuple(pair) for pair in row["loss_history"]]
    row["dev_curve"] = [tuple(pair) for pair in row.get("dev_curve", [])]
    return TrainResult(**row)


def train(
    examples: list[TrainExample],
    data: Dataset,
    settings: TrainConfig,
    output_dir: Path,
    dev_split: str | None = None,
    progress: bool = True,
) -> Any:
    """Train as ``settings.launcher`` says: in this process (``none``) or data-parallel under torchrun."""
    if settings.launcher == "torchrun":
        return launch(examples, data, settings, output_dir, dev_split)
    from denseflow.model.training.trainer import train_bi_encoder

    return train_bi_encoder(examples, data, settings, output_dir, dev_split=dev_split, progress=progress)


def main(argv: list[str] | None = None) -> None:
    """Entry of every torchrun process: rebuild the trainer from the spec and train; rank 0 writes the result."""
    import torch

    (spec_path,) = argv if argv is not None else sys.argv[1:]
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    with open(spec["inputs"], "rb") as source:
        inputs = pickle.load(source)
    if "OMP_NUM_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    from denseflow.model.training.trainer import train_bi_encoder

    settings = TrainConfig.model_validate(spec["settings"])
    result = train_bi_encoder(
        inputs["examples"],
        inputs["data"],
        settings,
        Path(spec["output_dir"]),
        dev_split=spec["dev_split"],
        progress=rank() == 0,
    )
    if rank() == 0:
        row = asdict(result) | {"model_dir": str(result.model_dir)}
        Path(spec["result"]).write_text(json.dumps(row), encoding="utf-8")


if __name__ == "__main__":
    main()
