"""Corpus encoding through ``publish_index`` on a Dask LocalCluster of 1 and of 2 workers: docs/s for each.

Each worker is one process with one thread, and torch's intra-op threads are pinned to that thread
(``runner.torch_threads`` defaults to ``dask_threads_per_worker``), so two workers use two cores and one
worker one core. Both runs publish the same sampled SciFact documents (seeded) with the bundled model in
fresh workspaces (nothing reused between them), in this one process, one after the other.

Rates come from Prefect's own task-run records: "encode span" is from the first ``encode-shard`` start to
the last one's end (model loads on each worker included), "shard time" sums the shards' run times. The
flow's wall time adds cluster start-up, planning, index build and publication.

    nice -n 10 .venv/bin/python bench/encode_dask.py --docs 256 --max-seq-length 128 --shard-size 32
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from denseflow.flows.publish_index import make_task_runner, publish_index
from denseflow.model.config import DataConfig, EncodeConfig, IndexConfig, PublishConfig, RunnerConfig
from denseflow.model.data.beir import RejectLog, bundled_scifact_dir, find_file, read_corpus
from denseflow.model.encoder import bundled_model_path

sys.path.insert(0, str(Path(__file__).parent))
from encode_throughput import cpu_summary  # noqa: E402


def write_sample(folder: Path, docs: int, seed: int) -> Path:
    """A bare BEIR corpus of ``docs`` seeded SciFact documents (no queries: recall is checked on documents)."""
    corpus = read_corpus(find_file(bundled_scifact_dir(), "corpus.jsonl"), RejectLog())
    ids = list(corpus)
    picked = sorted(np.random.default_rng(seed).choice(len(ids), min(docs, len(ids)), replace=False))
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "corpus.jsonl").open("w", encoding="utf-8") as out:
        for i in picked:
            document = corpus[ids[i]]
            out.write(json.dumps({"_id": ids[i], "title": document.title, "text": document.text}) + "\n")
    return folder


def shard_times(flow_run_id: object) -> tuple[float, float, int]:
    """(encode span, summed shard run time, shards) of one flow run, from Prefect's task-run records."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    shards = [run for run in runs if run.name.startswith("encode-shard") and run.start_time and run.end_time]
    span = (max(run.end_time for run in shards) - min(run.start_time for run in shards)).total_seconds()
    busy = sum((run.end_time - run.start_time).total_seconds() for run in shards)
    return span, busy, len(shards)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=256)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--shard-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    print(f"date {time.strftime('%Y-%m-%d %H:%M:%S')}  load {os.getloadavg()}  niceness {os.nice(0)}")
    print(f"cpu {cpu_summary()}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        corpus_dir = write_sample(Path(tmp) / "corpus", args.docs, args.seed)
        for workers in args.workers:
            config = PublishConfig(
                workspace=Path(tmp) / f"ws-{workers}",
                model=bundled_model_path(),
                data=DataConfig(path=corpus_dir),
                encode=EncodeConfig(
                    batch_size=args.batch_size,
                    precision="fp32",
                    max_seq_length=args.max_seq_length,
                    shard_size=args.shard_size,
                ),
                index=IndexConfig(name="bench"),
                runner=RunnerConfig(kind="dask", dask_workers=workers, dask_threads_per_worker=1),
            )
            start = time.perf_counter()
            state = publish_index.with_options(task_runner=make_task_runner(config.runner))(config, return_state=True)
            wall = time.perf_counter() - start
            result = state.result()
            span, busy, shards = shard_times(state.state_details.flow_run_id)
            rows.append((workers, result["documents"], shards, span, busy, wall))

    print(
        f"\n{args.docs} docs, max_seq_length {args.max_seq_length}, shards of {args.shard_size}, "
        "1 thread per worker (torch pinned)"
    )
    print(f"{'workers':>7}{'shards':>8}{'span s':>9}{'docs/s':>9}{'× 1 worker':>12}{'shard s':>9}{'flow wall s':>13}")
    base = None
    for workers, documents, shards, span, busy, wall in rows:
        rate = documents / span
        base = base or rate
        print(f"{workers:>7}{shards:>8}{span:>9.1f}{rate:>9.2f}{rate / base:>11.2f}×{busy:>9.1f}{wall:>13.1f}")
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
