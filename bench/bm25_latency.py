"""BM25 single-query latency, rank-bm25 versus bm25s (the serving backend), at SciFact size and at 1M documents.

SciFact: the bundled 5,183-document corpus and its 300 test queries. 1M: a SYNTHETIC corpus, documents whose
tokens are drawn from SciFact's own term distribution (its Zipf curve, 35k terms) and whose lengths are
SciFact's resampled and scaled by ``--length-scale`` (default 0.33: ~54 tokens, passage length, so 1M fits in
memory for rank-bm25 too); queried with the real SciFact test queries. Both libraries index the same token
lists (the project's tokenizer), so both score with the same Okapi BM25 (k1 1.5, b 0.75).

Per query: tokenize, score, top-10 (``BM25Index.search`` for bm25s; ``get_scores`` + the same top-k for
rank-bm25). Memory is the growth of the process's peak RSS while the index is built (a rough figure: Python
frees to its own pools). The synthetic bm25s index is cached under ``<workspace>/cache/bench``.

    nice -n 10 .venv/bin/python bench/bm25_latency.py                # both sizes
    nice -n 10 .venv/bin/python bench/bm25_latency.py --sizes 5k
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from denseflow.model.data.beir import RejectLog, bundled_scifact_dir, load_beir
from denseflow.model.index.bm25 import LEGACY_BM25, BM25Index
from denseflow.model.index.topk import top_k
from denseflow.model.workspace import workspace_dir

# The comparison that chose bm25s was made with the unstemmed analyzer (k1 1.5, b 0.75); rank-bm25 takes the same
# token lists, so both score the same terms.
tokenize = LEGACY_BM25.tokenize


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def percentiles(values: list[float]) -> str:
    p50, p99 = np.percentile(values, [50, 99])
    return f"p50 {p50:8.2f} ms  p99 {p99:8.2f} ms  (n={len(values)})"


def timed_queries(search: Callable[[str], object], queries: list[str], warmup: int = 3) -> list[float]:
    for query in queries[:warmup]:
        search(query)
    times = []
    for query in queries:
        start = time.perf_counter()
        search(query)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def synthetic_tokens(corpus_tokens: list[list[str]], docs: int, length_scale: float, seed: int) -> list[list[str]]:
    """``docs`` token lists drawn from the term distribution and resampled lengths of ``corpus_tokens``.

    Tokens are the vocabulary's own string objects, so a million documents cost pointers, not new strings.
    """
    counts = Counter(token for tokens in corpus_tokens for token in tokens)
    vocab = list(counts)
    freq = np.array([counts[t] for t in vocab], dtype=np.float64)
    rng = np.random.default_rng(seed)
    lengths = np.maximum(1, (rng.choice([len(t) for t in corpus_tokens], docs) * length_scale).astype(np.int64))
    flat = rng.choice(len(vocab), int(lengths.sum()), p=freq / freq.sum()).astype(np.int32)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    return [[vocab[i] for i in flat[s:e].tolist()] for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]


def bench_rank_bm25(doc_ids: list[str], tokens: list[list[str]], queries: list[str]) -> None:
    from rank_bm25 import BM25Okapi

    gc.collect()
    before = peak_rss_mb()
    start = time.perf_counter()
    okapi = BM25Okapi(tokens)
    build = time.perf_counter() - start
    print(f"  rank-bm25  build {build:7.1f} s  peak RSS +{peak_rss_mb() - before:7.0f} MB")

    def search(query: str) -> list[tuple[str, float]]:
        positions, scores = top_k(np.asarray(okapi.get_scores(tokenize(query)), dtype=np.float32), 10)
        return [(doc_ids[i], float(s)) for i, s in zip(positions, scores, strict=True)]

    print(f"  rank-bm25  query {percentiles(timed_queries(search, queries, warmup=1))}")


def bench_bm25s(
    doc_ids: list[str], tokens: list[list[str]] | None, queries: list[str], cache: Path | None
) -> BM25Index:
    gc.collect()
    before = peak_rss_mb()
    if cache is not None and (cache / "params.index.json").is_file():
        start = time.perf_counter()
        index = BM25Index.load(cache, doc_ids)
        print(f"  bm25s      load  {time.perf_counter() - start:7.1f} s  (cached build in {cache})")
    else:
        start = time.perf_counter()
        index = BM25Index.from_tokens(doc_ids, tokens or [], LEGACY_BM25)
        build = time.perf_counter() - start
        print(f"  bm25s      build {build:7.1f} s  peak RSS +{peak_rss_mb() - before:7.0f} MB")
        if cache is not None:
            index.save(cache)
    print(f"  bm25s      query {percentiles(timed_queries(lambda q: index.search(q, 10), queries))}")
    return index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["5k", "1m"], choices=["5k", "1m"])
    parser.add_argument("--docs", type=int, default=1_000_000, help="synthetic corpus size for '1m'")
    parser.add_argument("--length-scale", type=float, default=0.33, help="synthetic length = SciFact's × this")
    parser.add_argument("--queries", type=int, default=300, help="SciFact test queries, one at a time")
    parser.add_argument(
        "--rank-queries", type=int, default=5, help="queries for rank-bm25 at 1M (each takes about a second)"
    )
    parser.add_argument("--skip-rank-bm25-1m", action="store_true", help="its 1M build takes minutes and GBs")
    args = parser.parse_args()

    print(f"date {time.strftime('%Y-%m-%d %H:%M:%S')}  cores {os.cpu_count()}  load {os.getloadavg()}")
    dataset = load_beir(bundled_scifact_dir(), ["test"], RejectLog())
    queries = list(dataset.split_queries("test").values())[: args.queries]
    doc_ids = list(dataset.corpus)
    tokens = [tokenize(dataset.corpus[doc_id].full_text) for doc_id in doc_ids]

    if "5k" in args.sizes:
        print(f"\nSciFact: {len(doc_ids)} documents, {len(queries)} test queries, k=10")
        bench_rank_bm25(doc_ids, tokens, queries)
        bench_bm25s(doc_ids, tokens, queries, cache=None)

    if "1m" in args.sizes:
        cache = workspace_dir() / "cache" / "bench" / f"bm25s-synthetic-{args.docs}-{args.length_scale}"
        synthetic_ids = [f"s{i}" for i in range(args.docs)]
        need_tokens = not (cache / "params.index.json").is_file() or not args.skip_rank_bm25_1m
        start = time.perf_counter()
        synthetic = synthetic_tokens(tokens, args.docs, args.length_scale, seed=0) if need_tokens else None
        mean_len = np.mean([len(t) for t in synthetic[:10000]]) if synthetic else float("nan")
        print(
            f"\nSYNTHETIC: {args.docs} documents (SciFact term distribution, mean length {mean_len:.0f} tokens), "
            f"generated in {time.perf_counter() - start:.1f}s; SciFact test queries, k=10"
        )
        bench_bm25s(synthetic_ids, synthetic, queries, cache)
        if not args.skip_rank_bm25_1m and synthetic is not None:
            bench_rank_bm25(synthetic_ids, synthetic, queries[: args.rank_queries])
    print(f"\nload after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
