"""A one-off ``denseflow search`` as a person runs it: wall time and peak RSS, cold and warm.

Runs ``denseflow search QUERY --json`` in a fresh process ``--runs`` times on a published index (cold: the first,
after dropping nothing but our own caches; warm: the rest, with the OS page cache warm) with each query backend:
``auto`` (the version's torch-free query tower when it has one) and ``torch`` (sentence-transformers). Prints the
wall time and the peak RSS (``/usr/bin/time`` style, from ``resource.getrusage`` of the child) of each, and checks
that both return the same ids with scores within 1e-4.

    .venv/bin/python bench/search_cli.py --workspace .denseflow "vitamin D and bone density"
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

DENSEFLOW = Path(sys.executable).with_name("denseflow")


# A fresh parent per run: its RUSAGE_CHILDREN peak is that one search process's own.
MEASURE = (
    "import resource, subprocess, sys; done = subprocess.run(sys.argv[1:]); "
    "print('peak_kb', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(done.returncode)"
)


def run_once(workspace: Path, query: str, backend: str) -> tuple[float, float, dict]:
    """Wall seconds, peak RSS MB of the search process, and its JSON result."""
    command = [
        str(DENSEFLOW),
        "search",
        query,
        "-k",
        "10",
        "--json",
        "--backend",
        backend,
        "--workspace",
        str(workspace),
    ]
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, *command],
        capture_output=True,
        text=True,
        env=os.environ | {"HF_HUB_OFFLINE": "1"},
    )
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed: {done.stderr[-500:]}")
    peak_kb = next(int(line.split()[1]) for line in done.stderr.splitlines() if line.startswith("peak_kb"))
    return wall, peak_kb / 1024, json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("query")
    parser.add_argument("--workspace", type=Path, default=Path(".denseflow"))
    parser.add_argument("--runs", type=int, default=4)
    args = parser.parse_args()
    results = {}
    print(f"date {time.strftime('%Y-%m-%d %H:%M')}; {os.cpu_count()} cores; load {os.getloadavg()}")
    print("| backend | run | wall s | peak RSS MB |\n|---|---|---|---|")
    for backend in ("auto", "torch"):
        for run in range(args.runs):
            wall, rss, result = run_once(args.workspace, args.query, backend)
            results[backend] = result
            print(f"| {backend} | {'cold' if run == 0 else 'warm'} | {wall:.2f} | {rss:.0f} |", flush=True)
    fast, slow = results["auto"]["hits"], results["torch"]["hits"]
    same_ids = [hit["doc_id"] for hit in fast] == [hit["doc_id"] for hit in slow]
    gap = max(abs(a["score"] - b["score"]) for a, b in zip(fast, slow, strict=True)) if fast else 0.0
    print(f"same ids: {same_ids}; largest score difference {gap:.2e}")


if __name__ == "__main__":
    main()
