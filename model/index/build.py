"""FAISS indexes over L2-normalised embeddings: what to build, building it, and holding it to exact search.

An approximate index (HNSW, IVF, and the compressed IVF-PQ and HNSW-SQ8 that carry corpora past RAM) is published only when its recall@10 against exact search
(:mod:`denseflow.model.index.topk`) clears a floor; :func:`embedding_agreement` compares two encodings of the
same texts (an ONNX or bf16 query tower against the reference) the same way.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import faiss
import numpy as np

from denseflow.model.index.topk import exact_search

IndexType = Literal["flat", "hnsw", "ivf", "ivfpq", "hnsw_sq"]
# index_factory strings that build an exact index: nothing to hold to a recall floor.
EXACT_FACTORIES = frozenset({"Flat", "IDMap,Flat", "IDMap2,Flat"})


class PublishedIndexError(RuntimeError):
    """Base of the errors of building, publishing and loading an index."""


class RecallTooLowError(PublishedIndexError):
    """An approximate index missed the recall floor against exact search; nothing was published."""

    def __init__(self, recall: float, floor: float, factory: str) -> None:
        super().__init__(
            f"recall@10 of the {factory!r} index against exact search is {recall:.4f}, "
            f"below the floor {floor:.4f}: not published (raise efSearch/nprobe or lower index.recall_floor)"
        )
        self.recall = recall
        self.floor = floor


@dataclass(frozen=True)
class IndexSpec:
    """Which FAISS index to build and how to search it. ``factory`` overrides the type-derived string."""

    type: IndexType = "flat"
    hnsw_m: int = 32
    hnsw_ef_construction: int = 200
    hnsw_ef_search: int = 128
    ivf_nlist: int | None = None
    ivf_nprobe: int = 32
    factory: str | None = None
    pq_m: int | None = None
    pq_bits: int = 8

    def nlist(self, count: int) -> int:
        """``ivf_nlist`` or about 4·√n lists, never more than a 39th of the points (FAISS's training floor)."""
        wanted = self.ivf_nlist or int(4 * math.sqrt(max(count, 1)))
        return max(1, min(wanted, count // 39 or 1))

    def factory_string(self, count: int, dimension: int) -> str:
        if self.factory:
            return self.factory
        if self.type == "flat":
            return "Flat"
        if self.type == "hnsw":
            return f"HNSW{self.hnsw_m},Flat"
        if self.type == "hnsw_sq":
            return f"HNSW{self.hnsw_m},SQ8"  # one byte per dimension instead of four, beside the graph
        if self.type == "ivfpq":
            return f"IVF{self.nlist(count)},PQ{self.pq_subquantizers(dimension)}x{self.pq_code_bits(count)}"
        return f"IVF{self.nlist(count)},Flat"

    def pq_subquantizers(self, dimension: int) -> int:
        """``pq_m`` or one sub-quantizer per 8 dimensions (48 bytes a vector at 384 dimensions)."""
        m = self.pq_m or max(1, dimension // 8)
        if dimension % m:
            raise ValueError(f"index.pq_m {m} does not divide the embedding dimension {dimension}")
        return m

    def pq_code_bits(self, count: int) -> int:
        """``pq_bits``, lowered for small corpora: k-means needs about 39 points per centroid (2^bits of them)."""
        return max(1, min(self.pq_bits, int(math.log2(max(count // 39, 2)))))

    @property
    def approximate(self) -> bool:
        """Held to the recall floor: every type but flat, and any ``factory`` string but an exact flat one."""
        if self.factory:
            return self.factory.replace(" ", "") not in EXACT_FACTORIES
        return self.type != "flat"

    def search_params(self) -> dict[str, int]:
        """Parameters FAISS's ParameterSpace sets at load time; stored in the manifest.

        A ``factory`` string gets those of the structure it names (``IVF...``: nprobe; ``HNSW...``: efSearch).
        """
        kind: str = self.type
        if self.factory:
            named = self.factory.upper()
            kind = "ivf" if "IVF" in named else "hnsw" if "HNSW" in named else "flat"
        if kind in ("hnsw", "hnsw_sq"):
            return {"efSearch": self.hnsw_ef_search}
        if kind in ("ivf", "ivfpq"):
            return {"nprobe": self.ivf_nprobe}
        return {}


def check_embeddings(embeddings: np.ndarray, tolerance: float = 1e-3) -> np.ndarray:
    """The embeddings as a C-contiguous float32 matrix; refuses NaNs and rows that are not unit length."""
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
        raise ValueError(f"expected a non-empty (n, dim) matrix, got shape {embeddings.shape}")
    matrix = np.ascontiguousarray(embeddings, dtype=np.float32)
    if not np.isfinite(matrix).all():
        raise ValueError("embeddings contain NaN or infinite values")
    norms = np.linalg.norm(matrix, axis=1)
    bad = np.flatnonzero(np.abs(norms - 1.0) > tolerance)
    if bad.size:
        raise ValueError(f"{bad.size} embeddings are not L2-normalised (row {bad[0]} has norm {norms[bad[0]]:.4f})")
    return matrix


def build_index(embeddings: np.ndarray, spec: IndexSpec, seed: int = 0) -> faiss.Index:
    """An inner-product index over ``embeddings`` (cosine similarity, since rows are unit length)."""
    matrix = check_embeddings(embeddings)
    count, dimension = matrix.shape
    index = faiss.index_factory(dimension, spec.factory_string(count, dimension), faiss.METRIC_INNER_PRODUCT)
    if isinstance(index, faiss.IndexHNSW):
        index.hnsw.efConstruction = spec.hnsw_ef_construction
    if not index.is_trained:
        # k-means on a sample is as good as on everything past ~256 points per list, and much faster;
        # PQ's codebooks want ~39 points per centroid of each sub-quantizer as well.
        rng = np.random.default_rng(seed)
        limit = max(256 * max(spec.nlist(count), 1), 64 * 2**spec.pq_bits)
        sample = matrix if count <= limit else matrix[np.sort(rng.choice(count, limit, replace=False))]
        index.train(sample)
    index.add(matrix)
    apply_search_params(index, spec.search_params())
    return index


def apply_search_params(index: faiss.Index, params: Mapping[str, int]) -> None:
    space = faiss.ParameterSpace()
    for key, value in params.items():
        space.set_index_parameter(index, key, value)


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, rows)`` each ``(n_queries, k)``; rows are -1 where the index has fewer than k hits."""
    matrix = np.ascontiguousarray(queries, dtype=np.float32)
    if matrix.ndim == 1:
        matrix = matrix[None, :]
    return index.search(matrix, k)


def recall_at_k(approx_rows: np.ndarray, exact_rows: np.ndarray) -> float:
    """Mean share of the exact top-k that the approximate top-k found (rows of -1 count as misses)."""
    k = exact_rows.shape[1]
    hits = [
        len(set(a[a >= 0].tolist()) & set(e[e >= 0].tolist())) for a, e in zip(approx_rows, exact_rows, strict=True)
    ]
    return float(np.mean(hits) / k) if hits else 1.0


def sample_rows(count: int, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(count, min(size, count), replace=False))


def verify_recall(
    index: faiss.Index,
    embeddings: np.ndarray,
    queries: np.ndarray | None = None,
    k: int = 10,
    sample: int = 200,
    seed: int = 0,
) -> float:
    """recall@k of ``index`` against exact search, on ``queries`` or, lacking them, sampled documents.

    Real queries are the better probe: documents used as queries find themselves first, which flatters
    graph indexes. Callers with a query set should pass up to ``sample`` of its embeddings.
    """
    k = min(k, index.ntotal)
    if queries is None or len(queries) == 0:
        queries = embeddings[sample_rows(len(embeddings), sample, seed)]
    elif len(queries) > sample:
        queries = queries[sample_rows(len(queries), sample, seed)]
    _, approx = search(index, queries, k)
    return recall_at_k(approx, exact_search(queries, embeddings, k)[0])


def check_recall(
    index: faiss.Index,
    embeddings: np.ndarray,
    spec: IndexSpec,
    floor: float,
    queries: np.ndarray | None = None,
    sample: int = 200,
    seed: int = 0,
) -> float:
    """recall@10 against exact search; raises :class:`RecallTooLowError` when an approximate index is short."""
    recall = verify_recall(index, embeddings, queries, k=10, sample=sample, seed=seed)
    if spec.approximate and recall < floor:
        raise RecallTooLowError(recall, floor, spec.factory_string(len(embeddings), embeddings.shape[1]))
    return recall


def embedding_agreement(reference: np.ndarray, candidate: np.ndarray, k: int = 10) -> dict[str, float]:
    """How close two encodings of the same texts are: mean and min cosine, and self-retrieval recall@k."""
    cosines = np.sum(reference * candidate, axis=1)
    k = min(k, len(reference))
    rows_ref = exact_search(reference, reference, k)[0]
    rows_cand = exact_search(candidate, candidate, k)[0]
    return {
        "mean_cosine": float(cosines.mean()),
        "min_cosine": float(cosines.min()),
        f"neighbour_recall@{k}": recall_at_k(rows_cand, rows_ref),
    }


def timed_build(embeddings: np.ndarray, spec: IndexSpec) -> tuple[faiss.Index, float]:
    start = time.perf_counter()
    index = build_index(embeddings, spec)
    return index, time.perf_counter() - start
