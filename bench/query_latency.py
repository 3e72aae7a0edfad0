"""Single-query latency, encode + search, through the real Searcher, at SciFact size (Flat and HNSW).

``--modes dense bm25 hybrid`` times each search mode side by side in the same run (hybrid = encode + FAISS
top-100 + BM25 top-100 + fusion), so a loaded machine slows all of them alike and their ratios still hold.

Publishes the SciFact corpus (5,183 documents, embedded with the model) as Flat and HNSW indexes
in a scratch folder, then sends SciFact test queries one at a time through ``Searcher.search``:
query validation, pointer check, query encoding (``role="query"``), FAISS search and id mapping.
Corpus embeddings come from the shared cache (``<workspace>/cache/embeddings``); the first run on a
machine encodes the corpus once (about 9 minutes at max_seq_length 256 on 2 idle cores).

    nice -n 10 .venv/bin/python bench/query_latency.py --threads 1 2
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from denseflow.model.data.beir import RejectLog, bundled_scifact_dir, load_beir
from denseflow.model.encoder import bundled_model_path, cached_corpus_embeddings
from denseflow.model.index.bm25 import BM25Index
from denseflow.model.index.build import IndexSpec, build_index, recall_at_k
from denseflow.model.index.documents import write_documents
from denseflow.model.index.store import build_manifest, publish
from denseflow.model.index.topk import exact_search
from denseflow.model.serving.search import Searcher
from denseflow.model.workspace import workspace_dir


def percentiles(values: list[float]) -> str:
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return f"p50 {p50:6.2f}  p90 {p90:6.2f}  p99 {p99:6.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder (default: bundled all-MiniLM-L6-v2)")
    parser.add_argument("--max-seq-length", type=int, default=256, help="of the corpus embeddings")
    parser.add_argument("--queries", type=int, default=300, help="SciFact test queries sent, one at a time")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="intra-op threads to try")
    parser.add_argument("--backends", nargs="+", default=["torch", "onnx"], choices=["torch", "onnx", "onnx-int8"])
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-search", type=int, default=64)
    parser.add_argument("--modes", nargs="+", default=["dense"], choices=["dense", "bm25", "hybrid"])
    parser.add_argument("--indexes", nargs="+", default=["flat", "hnsw"], choices=["flat", "hnsw"])
    parser.add_argument(
        "--fields",
        nargs="+",
        default=["title,snippet"],
        help="hit fields per run, compared side by side ('' = ids only, as before documents were stored)",
    )
    args = parser.parse_args()

    model_dir = Path(args.model or bundled_model_path())
    dataset = load_beir(bundled_scifact_dir(), ["test"], RejectLog())
    print(f"date {time.strftime('%Y-%m-%d %H:%M:%S')}  load {os.getloadavg()}")
    start = time.perf_counter()
    cache = workspace_dir() / "cache" / "embeddings"  # shared with evaluation: the same model encodes once
    doc_ids, embeddings = cached_corpus_embeddings(model_dir, dataset.corpus, cache, args.max_seq_length)
    print(
        f"corpus embeddings {embeddings.shape} (max_seq_length {args.max_seq_length}) in {time.perf_counter() - start:.1f}s"
    )
    queries = list(dataset.split_queries("test").values())[: args.queries]

    root = Path(tempfile.mkdtemp(prefix="denseflow-latency-"))
    specs = {"flat": IndexSpec("flat"), "hnsw": IndexSpec("hnsw", hnsw_m=args.hnsw_m, hnsw_ef_search=args.ef_search)}
    specs = {name: spec for name, spec in specs.items() if name in args.indexes}
    documents = write_documents(
        root / "docs.sqlite", ((d, dataset.corpus[d].title, dataset.corpus[d].text) for d in doc_ids)
    )
    bm25_dir = root / "bm25-build"
    BM25Index.from_texts(doc_ids, [dataset.corpus[d].full_text for d in doc_ids]).save(bm25_dir)
    identity = {"name": "bench", "version": model_dir.name, "run_id": None, "max_seq_length": args.max_seq_length}
    for name, spec in specs.items():
        started = time.perf_counter()
        index = build_index(embeddings, spec)
        manifest = build_manifest(spec, len(doc_ids), embeddings.shape[1], identity, "scifact", 0.0, None, 0)
        publish(root, name, index, doc_ids, model_dir, manifest, bm25_dir=bm25_dir, documents_file=documents)
        print(f"{name}: built and published in {time.perf_counter() - started:.1f}s ({spec.factory_string(0, 0)})")

    print(f"\n{len(queries)} SciFact test queries, one at a time, k=10; milliseconds")
    retrieved: dict[str, list[list[int]]] = {}
    p50s: dict[str, float] = {}
    for backend, threads, name in itertools.product(args.backends, args.threads, specs):
        torch.set_num_threads(threads)
        searcher = Searcher(root, name, reload_interval_s=1.0, threads=threads, backend=backend)
        row_of = {doc_id: row for row, doc_id in enumerate(searcher._state.index.doc_ids)}
        for mode, fields in itertools.product(args.modes, args.fields):
            for query in queries[:10]:
                searcher.search(query, 10, mode=mode, fields=fields)  # warm-up
            total, encode_ms, search_ms, rows = [], [], [], []
            for query in queries:
                started = time.perf_counter()
                result = searcher.search(query, 10, mode=mode, fields=fields)
                total.append((time.perf_counter() - started) * 1e3)
                encode_ms.append(result.encode_ms)
                search_ms.append(result.search_ms)
                rows.append([row_of[hit.doc_id] for hit in result.hits])
            if mode == "dense":
                retrieved[f"{name} ({backend})"] = rows
            label = f"{backend:<5} threads {threads}  {name:<5} {mode:<6} fields {fields or 'ids':<12}"
            p50s[label] = float(np.percentile(total, 50))
            print(f"{label} total  {percentiles(total)}")
            print(f"{label} encode {percentiles(encode_ms)}")
            print(f"{label} search {percentiles(search_ms)}")
    per_configuration = len(args.modes) * len(args.fields)
    if per_configuration > 1:
        print("\np50 total against the first mode and fields of each configuration:")
        labels = list(p50s)
        for start in range(0, len(labels), per_configuration):
            base = p50s[labels[start]]
            group = labels[start : start + per_configuration]
            print("  " + ", ".join(f"[{label.split(None, 4)[-1]}] {p50s[label] - base:+.2f} ms" for label in group))
    query_vectors = np.concatenate([searcher.encode_query(q) for q in queries])
    exact = exact_search(query_vectors, embeddings, 10)[0]
    # The same profile bench/ann_1m.py prints for its synthetic vectors, so the two can be compared.
    scores = np.sort(query_vectors @ embeddings.T, axis=1)[:, ::-1]
    random_pairs = np.sum(query_vectors * embeddings[np.random.default_rng(0).choice(len(embeddings), len(queries))], 1)
    print(
        f"cosine profile (SciFact queries vs corpus): top-1 {scores[:, 0].mean():.3f}, top-10 {scores[:, 9].mean():.3f}, "
        f"random pair {random_pairs.mean():.3f} ± {random_pairs.std():.3f}"
    )
    for name, rows in retrieved.items():  # dense mode only: the FAISS index against exact search
        print(f"recall@10 vs exact, {name}: {recall_at_k(np.array(rows), exact):.4f}")
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
