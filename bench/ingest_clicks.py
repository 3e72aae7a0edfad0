"""Benchmark: ingest a 1,000,000-row click log (target: <= 60 s on the 2-core machine, memory bounded).

Writes a synthetic click log over the bundled SciFact corpus (Zipf-distributed queries, 10 results a page,
position-biased clicks, about 0.1 % bad rows), then runs ``denseflow.model.data.ingest.ingest`` on it in a fresh child process
and prints rows/s and the child's peak RSS. Run at two sizes (the default) to see memory follow the number of
distinct (query, document) pairs, not the number of rows.

    nice -n 10 .venv/bin/python bench/ingest_clicks.py                     # 250k and 1M rows, plain JSONL
    nice -n 10 .venv/bin/python bench/ingest_clicks.py --sizes 1000000 --gzip
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def generate(path: Path, rows: int, queries: int, seed: int) -> int:
    """Write ``rows`` click rows (pages of 10) and return the number of deliberately bad rows among them."""
    from denseflow.model.data.beir import RejectLog, bundled_scifact_dir, find_file, read_corpus

    doc_ids = list(read_corpus(find_file(bundled_scifact_dir(), "corpus.jsonl"), RejectLog()))
    rng = random.Random(seed)
    # Zipf(1) over query ranks, sampled by inverting the harmonic CDF approximately.
    harmonic = math.log(queries) + 0.5772
    origin = datetime(2025, 1, 1, tzinfo=UTC)
    bad = 0
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as out:
        written, impression = 0, 0
        while written < rows:
            rank = min(queries - 1, int(math.exp(rng.random() * harmonic - 0.5772)))
            query = f"synthetic query {rank} about topic {rank % 997}"
            stamp = (origin + timedelta(seconds=impression * 7)).isoformat()
            session = f"s{impression // 3}"
            for position in range(1, 11):
                if written == rows:
                    break
                doc_id = doc_ids[(rank * 7919 + position * 104729) % len(doc_ids)]
                clicked = rng.random() < 0.5 / position
                dwell = round(rng.lognormvariate(3.0, 1.0), 1) if clicked else None
                row = {
                    "query": query,
                    "doc_id": doc_id,
                    "position": position,
                    "clicked": clicked,
                    "dwell": dwell,
                    "timestamp": stamp,
                    "session_id": session,
                    "impression_id": f"i{impression}",
                }
                line = json.dumps(row)
                if rng.random() < 0.001:  # a sprinkling of the rows real logs contain
                    bad += 1
                    line = rng.choice([line[: len(line) // 2], line.replace(doc_id, "missing-doc"), '{"query": 1}'])
                out.write(line + "\n")
                written += 1
            impression += 1
    return bad


def ingest_child(log: Path, out: Path) -> None:
    """Runs in a fresh process so its peak RSS is the ingest's alone."""
    from denseflow.model.config import DataConfig
    from denseflow.model.data.ingest import ingest

    config = DataConfig(source="clicks", path=log, judged_eval=True, splits={"train": 0.9, "dev": 0.1})
    start = time.perf_counter()
    result = ingest(config, out)
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report = result.report
    print(
        json.dumps(
            {
                "rows": report.rows,
                "seconds": round(seconds, 2),
                "cpu_seconds": round(cpu, 2),
                "rows_per_s": round(report.rows / seconds),
                "peak_rss_mib": round(peak_mib, 1),
                "rejected": report.rejected_rows,
                "queries_with_positive": report.queries,
                "positives": report.positives,
                "distinct_pairs": report.distinct_pairs,
                "skip_above_pairs": report.skip_above_pairs,
            }
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="250000,1000000", help="comma-separated row counts")
    parser.add_argument("--queries", type=int, default=200_000, help="distinct queries in the Zipf universe")
    parser.add_argument("--gzip", action="store_true", help="write and read .jsonl.gz")
    parser.add_argument("--workdir", type=Path, help="keep files here (default: a temporary folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", nargs=2, metavar=("LOG", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        ingest_child(Path(args.child[0]), Path(args.child[1]))
        return 0

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-clicks-"))
    workdir.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    print(
        f"# {datetime.now(UTC).isoformat(timespec='seconds')}  load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    for size in (int(item) for item in args.sizes.split(",")):
        log = workdir / f"clicks-{size}.jsonl{'.gz' if args.gzip else ''}"
        start = time.perf_counter()
        bad = generate(log, size, args.queries, args.seed)
        made = time.perf_counter() - start
        print(f"generated {size:,} rows ({bad} bad) in {made:.1f} s: {log} ({log.stat().st_size / 2**20:.0f} MiB)")
        child = subprocess.run(
            [sys.executable, __file__, "--child", str(log), str(workdir / f"out-{size}")],
            capture_output=True,
            text=True,
            check=False,
        )
        if child.returncode != 0:
            print(child.stderr, file=sys.stderr)
            return child.returncode
        figures = json.loads(child.stdout.strip().splitlines()[-1])
        verdict = "OK" if figures["seconds"] <= 60 or size < 1_000_000 else "SLOWER THAN 60 s TARGET"
        print(
            f"ingested {figures['rows']:,} rows in {figures['seconds']:.1f} s = {figures['rows_per_s']:,} rows/s "
            f"(process CPU {figures['cpu_seconds']:.1f} s; the machine is shared), "
            f"peak RSS {figures['peak_rss_mib']:.0f} MiB for {figures['distinct_pairs']:,} distinct (query, doc) pairs, "
            f"rejected {figures['rejected']}, "
            f"{figures['queries_with_positive']:,} queries with a positive, "
            f"{figures['skip_above_pairs']:,} skip-above pairs  [{verdict}]"
        )
    load = os.getloadavg()
    print(f"# load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
