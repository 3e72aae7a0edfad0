"""Training step time on SciFact: batch 32 with one BM25 hard negative, fp32 versus bf16 autocast.

    .venv/bin/python bench/train_step.py --steps 6 --precisions fp32 bf16

Prints the median step time per precision (the first step is warm-up and excluded) and whether the CPU
has native bf16. Quality under bf16 is a separate question: see the README for what was measured.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from denseflow.model.config import MiningConfig, TrainConfig  # noqa: E402
from denseflow.model.data.beir import RejectLog, bundled_scifact_dir, load_beir  # noqa: E402
from denseflow.model.encoder import native_bf16  # noqa: E402
from denseflow.model.index.bm25 import BM25Index  # noqa: E402
from denseflow.model.mining.negatives import mine_negatives  # noqa: E402
from denseflow.model.training.trainer import train_bi_encoder  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    args = parser.parse_args()

    dataset = load_beir(bundled_scifact_dir(), ["train"], RejectLog())
    index = BM25Index(dataset.corpus)
    mining = MiningConfig(candidates="bm25", teacher="none", seed=0)
    examples, _ = mine_negatives(dataset, "train", mining, scorer=lambda q: index.scores(dataset.queries[q]))
    examples = examples[: args.batch_size * (args.steps + 1)]
    print(f"native bf16 on this CPU: {native_bf16()}; torch threads: {os.cpu_count()}")
    for precision in args.precisions:
        settings = TrainConfig(
            batch_size=args.batch_size,
            max_steps=args.steps,
            max_seq_length=args.max_seq_length,
            precision=precision,
            save_steps=10_000,
        )
        with tempfile.TemporaryDirectory() as tmp:
            result = train_bi_encoder(examples, dataset, settings, Path(tmp), progress=False)
        timed = sorted(result.step_seconds[1:]) or result.step_seconds
        median = timed[len(timed) // 2]
        print(
            f"{precision}: median step {median:.2f} s over {len(timed)} steps "
            f"(batch {args.batch_size}, 1 hard negative, max_seq_length {args.max_seq_length}); "
            f"all steps: {', '.join(f'{s:.1f}' for s in result.step_seconds)}"
        )


if __name__ == "__main__":
    main()
