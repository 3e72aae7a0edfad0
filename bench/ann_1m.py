"""Search-only latency, recall@10 versus exact search and bytes per vector on a synthetic 1M × 384 index.

Types: Flat (exact), HNSW, IVF, and the compressed ones that carry a corpus past RAM: IVF-PQ (``ivfpq``,
product-quantized codes of ``--pq-m`` bytes) and HNSW over 8-bit scalar codes (``hnsw_sq``). Bytes per
vector are the serialized index's size over its vector count (codes, graph links, list ids, centroids),
and "fits in 24 GiB" divides 24 GiB by it (the index alone: no ids, no model, no OS).

The data are SYNTHETIC, not embeddings of real text: a two-level Gaussian mixture on the unit sphere
(topics → sub-topics → points), which gives the nearest-neighbour structure ANN indexes exploit in
real embeddings (neighbours in a dense neighbourhood, unrelated documents near-orthogonal). Uniform
random vectors would be harder than any real corpus; tight clusters would be easier. The script
prints the similarity profile (top-1, top-10 and random-pair cosine) so it can be compared with real
embeddings (bench/query_latency.py prints SciFact's).

Queries are fresh draws from the same mixture (not indexed points), searched one at a time on one
thread, k=10; ground truth is exact inner-product search over all 1M vectors. Built indexes and the
ground truth are cached under ``<workspace>/cache/bench`` so parameter sweeps do not rebuild.

    nice -n 10 .venv/bin/python bench/ann_1m.py                  # build (minutes on 2 cores) and sweep
    nice -n 10 .venv/bin/python bench/ann_1m.py --n 200000 --queries 300   # a quick smaller run
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

import faiss
import numpy as np

from denseflow.model.index.build import recall_at_k
from denseflow.model.workspace import workspace_dir


def normalise(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def mixture(n: int, dim: int, topics: int, subtopics: int, spread: float, noise: float, seed: int) -> np.ndarray:
    """Unit vectors: topic centre → sub-topic (``spread``) → point (``noise``), drawn in chunks."""
    rng = np.random.default_rng(1234)  # the mixture itself is fixed; ``seed`` only draws points from it
    centres = normalise(rng.standard_normal((topics, dim), dtype=np.float32))
    sub = centres.repeat(subtopics, axis=0)
    sub = normalise(sub + spread / np.sqrt(dim) * rng.standard_normal(sub.shape, dtype=np.float32))
    draw = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        stop = min(start + 100_000, n)
        which = draw.integers(0, len(sub), stop - start)
        chunk = sub[which] + noise / np.sqrt(dim) * draw.standard_normal((stop - start, dim), dtype=np.float32)
        out[start:stop] = normalise(chunk)
    return out


def cached(path: Path, make, save, load):  # noqa: ANN001, ANN201 - tiny helper for numpy arrays and faiss indexes
    if path.exists():
        return load(path), 0.0
    start = time.perf_counter()
    value = make()
    seconds = time.perf_counter() - start
    tmp = path.with_name(path.name + ".tmp")
    save(value, tmp)
    os.replace(tmp, path)
    return value, seconds


def save_npy(value: np.ndarray, path: Path) -> None:
    with path.open("wb") as out:  # a file object: np.save would append ".npy" to the temporary name
        np.save(out, value)


def save_truth(value: tuple[np.ndarray, np.ndarray], path: Path) -> None:
    with path.open("wb") as out:  # a file object: np.savez would append ".npz" to the temporary name
        np.savez(out, scores=value[0], rows=value[1])


def one_at_a_time(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows found and per-query milliseconds, each query its own ``search`` call."""
    rows = np.empty((len(queries), k), dtype=np.int64)
    times = np.empty(len(queries))
    for i in range(len(queries)):
        start = time.perf_counter()
        _, found = index.search(queries[i : i + 1], k)
        times[i] = (time.perf_counter() - start) * 1e3
        rows[i] = found[0]
    return rows, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--topics", type=int, default=2000)
    parser.add_argument("--subtopics", type=int, default=10)
    parser.add_argument("--spread", type=float, default=0.8, help="sub-topic distance from its topic centre")
    parser.add_argument("--noise", type=float, default=0.8, help="point distance from its sub-topic centre")
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=80)
    parser.add_argument("--ef-search", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    parser.add_argument("--ivf-nlist", type=int, default=1024)
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    parser.add_argument("--pq-m", type=int, default=48, help="ivfpq: sub-quantizers, one byte each (8-bit codes)")
    parser.add_argument(
        "--types",
        nargs="+",
        default=["flat", "hnsw", "ivf", "ivfpq", "hnsw_sq"],
        choices=["flat", "hnsw", "ivf", "ivfpq", "hnsw_sq"],
    )
    parser.add_argument("--build-threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    print(f"date {time.strftime('%Y-%m-%d %H:%M:%S')}  load {os.getloadavg()}  cpus {os.cpu_count()}")
    cache = workspace_dir() / "cache" / "bench"
    cache.mkdir(parents=True, exist_ok=True)
    print(f"cache {cache} (set DENSEFLOW_HOME to keep it somewhere private)")
    tag = f"{args.n}x{args.dim}-t{args.topics}x{args.subtopics}-s{args.spread}-n{args.noise}"
    data, seconds = cached(
        cache / f"data-{tag}.npy",
        lambda: mixture(args.n, args.dim, args.topics, args.subtopics, args.spread, args.noise, seed=1),
        save_npy,
        lambda path: np.load(path),
    )
    queries = mixture(args.queries, args.dim, args.topics, args.subtopics, args.spread, args.noise, seed=2)
    print(f"SYNTHETIC data {data.shape} ({tag}) {f'generated in {seconds:.1f}s' if seconds else 'from cache'}")

    faiss.omp_set_num_threads(args.build_threads)
    (scores, truth), seconds = cached(
        cache / f"truth-{tag}-q{args.queries}.npz",
        lambda: faiss.knn(queries, data, 10, metric=faiss.METRIC_INNER_PRODUCT),
        save_truth,
        lambda path: (lambda z: (z["scores"], z["rows"]))(np.load(path)),
    )
    pairs = min(1000, len(queries))
    random_pairs = np.sum(queries[:pairs] * data[:pairs], axis=1)
    print(
        f"exact ground truth ({args.queries} queries) {f'computed in {seconds:.1f}s' if seconds else 'from cache'}; "
        f"cosine profile: top-1 {scores[:, 0].mean():.3f}, top-10 {scores[:, 9].mean():.3f}, "
        f"random pair {random_pairs.mean():.3f} ± {random_pairs.std():.3f}"
    )

    for kind in args.types:
        if kind in ("hnsw", "hnsw_sq"):
            codes = "Flat" if kind == "hnsw" else "SQ8"
            name = f"{kind}-{tag}-M{args.hnsw_m}-efc{args.ef_construction}.faiss"
            factory = f"HNSW{args.hnsw_m},{codes}"

            def make(factory: str = factory) -> faiss.Index:
                index = faiss.index_factory(args.dim, factory, faiss.METRIC_INNER_PRODUCT)
                index.hnsw.efConstruction = args.ef_construction
                if not index.is_trained:  # SQ8 learns each dimension's range first
                    index.train(
                        data[np.random.default_rng(0).choice(len(data), min(len(data), 100_000), replace=False)]
                    )
                index.add(data)
                return index

            knobs, values = "efSearch", args.ef_search
        elif kind in ("ivf", "ivfpq"):
            codes = "Flat" if kind == "ivf" else f"PQ{args.pq_m}"
            name = f"{kind}-{tag}-{args.ivf_nlist}{'' if kind == 'ivf' else f'-pq{args.pq_m}'}.faiss"
            factory = f"IVF{args.ivf_nlist},{codes}"

            def make(factory: str = factory) -> faiss.Index:
                index = faiss.index_factory(args.dim, factory, faiss.METRIC_INNER_PRODUCT)
                rng = np.random.default_rng(0)
                index.train(data[rng.choice(len(data), min(len(data), 64 * args.ivf_nlist), replace=False)])
                index.add(data)
                return index

            knobs, values = "nprobe", args.nprobe
        else:
            name, factory, knobs, values = f"flat-{tag}.faiss", "Flat", None, [None]

            def make(factory: str = factory) -> faiss.Index:
                index = faiss.index_factory(args.dim, factory, faiss.METRIC_INNER_PRODUCT)
                index.add(data)
                return index

        faiss.omp_set_num_threads(args.build_threads)
        index, seconds = cached(
            cache / name,
            make,
            lambda value, path: faiss.write_index(value, str(path)),
            lambda p: faiss.read_index(str(p)),
        )
        built = f"built in {seconds:.0f}s on {args.build_threads} threads" if seconds else "loaded from cache"
        size = (cache / name).stat().st_size
        per_vector = size / index.ntotal
        fits = 24 * 2**30 / per_vector
        print(f"\n{factory} over {index.ntotal:,} vectors: {built}")
        print(
            f"  {per_vector:.1f} bytes per vector ({size / 2**30:.2f} GiB); fits in 24 GiB: {fits / 1e6:,.0f}M vectors"
        )
        print(f"{knobs or '-':>9}  recall@10   p50 ms   p90 ms   p99 ms   (one query per call, 1 thread)")
        faiss.omp_set_num_threads(1)
        space = faiss.ParameterSpace()
        for value in values:
            if knobs:
                space.set_index_parameter(index, knobs, value)
            one_at_a_time(index, queries[:50], 10)  # warm-up: page the index in
            rows, times = one_at_a_time(index, queries, 10)
            p50, p90, p99 = np.percentile(times, [50, 90, 99])
            print(f"{value or '-':>9}  {recall_at_k(rows, truth):>9.4f}  {p50:7.3f}  {p90:7.3f}  {p99:7.3f}")
        del index
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"\npeak RSS {peak:.1f} GiB; load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
