"""Publication at corpus scale: a full publish against one after 1 % of the documents changed.

The corpus is SciFact repeated ``--copies`` times (20 by default: 103,660 documents). The copies are synthetic:
copy k of a document has id ``<id>-c<k>`` and its sentences rotated by k places, so every copy is a distinct text
the encoder must embed (nothing is a duplicate the cache could share). Then ``--changed`` of the documents
(1 %, spread evenly) get a sentence appended, and the corpus is published again into the same workspace.

Both publications run the real ``publish_index`` flow (bundled all-MiniLM-L6-v2, ``encode.precision auto``,
the index type asked for), timed end to end from the flow's start to its return, Prefect included. The figure
the target is set on: incremental wall time as a share of the full one (≤ 5 %).

    .venv/bin/python bench/incremental_publish.py --copies 20 --max-seq-length 128
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from encode_throughput import cpu_summary  # noqa: E402 - the bench scripts share one CPU line

from denseflow.model.config import DataConfig, EncodeConfig, IndexConfig, PublishConfig  # noqa: E402
from denseflow.model.data.beir import RejectLog, bundled_scifact_dir, find_file, read_corpus  # noqa: E402
from denseflow.model.encoder import bundled_model_path  # noqa: E402


def rotated(text: str, places: int) -> str:
    sentences = [part for part in text.split(". ") if part]
    if len(sentences) < 2:
        return f"{text} (copy {places})"
    places %= len(sentences)
    return ". ".join(sentences[places:] + sentences[:places])


def write_corpus(folder: Path, copies: int) -> list[dict]:
    source = read_corpus(find_file(bundled_scifact_dir(), "corpus.jsonl"), RejectLog())
    rows = [
        {"_id": f"{doc_id}-c{copy}", "title": doc.title, "text": rotated(doc.text, copy)}
        for copy in range(copies)
        for doc_id, doc in source.items()
    ]
    save(folder, rows)
    return rows


def save(folder: Path, rows: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "corpus.jsonl").open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row) + "\n")
    queries = find_file(bundled_scifact_dir(), "queries.jsonl")
    (folder / queries.name).write_bytes(queries.read_bytes())


def publish(workspace: Path, corpus: Path, args: argparse.Namespace) -> tuple[float, object]:
    from denseflow.flows.publish_index import run_publish

    config = PublishConfig(
        workspace=workspace,
        model=bundled_model_path(),
        data=DataConfig(path=corpus),
        encode=EncodeConfig(max_seq_length=args.max_seq_length, precision=args.precision),
        index=IndexConfig(name="bench", type=args.index_type),
    )
    start = time.perf_counter()
    result = run_publish(config)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=20, help="SciFact copies in the corpus")
    parser.add_argument("--changed", type=float, default=0.01, help="share of documents edited between publishes")
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32", "int8"])
    parser.add_argument("--index-type", default="flat", choices=["flat", "hnsw", "ivf", "ivfpq", "hnsw_sq"])
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder, removed after")
    args = parser.parse_args()

    print(f"date {time.strftime('%Y-%m-%d %H:%M:%S')}  load {os.getloadavg()}")
    print(f"cpu {cpu_summary()}")
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root = Path(tmp)
        rows = write_corpus(root / "corpus", args.copies)
        print(f"corpus: {len(rows)} documents (SciFact × {args.copies}, sentences rotated per copy)")
        workspace = root / "workspace"
        full_seconds, full = publish(workspace, root / "corpus", args)
        print(
            f"full publish:        {full_seconds:8.1f} s  encoded {full.documents_encoded:>7}  "
            f"reused {full.documents_reused:>7}  precision {full.precision}  index build {full.build_seconds:.2f} s"
        )

        step = max(1, round(1 / args.changed))
        edited = 0
        for position in range(0, len(rows), step):
            rows[position]["text"] += " This abstract was revised after publication."
            edited += 1
        save(root / "changed", rows)
        incremental_seconds, incremental = publish(workspace, root / "changed", args)
        print(
            f"after {edited} edits:  {incremental_seconds:8.1f} s  encoded {incremental.documents_encoded:>7}  "
            f"reused {incremental.documents_reused:>7}  index build {incremental.build_seconds:.2f} s"
        )
        share = incremental_seconds / full_seconds
        print(f"incremental / full: {share:.1%} (target ≤ 5 %: {'met' if share <= 0.05 else 'MISSED'})")
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
