"""Exact top-k: the one implementation behind evaluation runs, BM25 search and the recall checks of an index."""

from __future__ import annotations

import numpy as np

# Score-matrix elements per chunk (~256 MiB of float32): queries are taken in chunks so a large corpus never
# needs the whole (queries x documents) matrix at once.
_CHUNK_ELEMENTS = 1 << 26


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(positions, scores)`` of the ``k`` best entries of each row (or of a vector), best first.

    Ties are broken by position, so equal scores (BM25 gives many) always come out in the same order.
    """
    single = scores.ndim == 1
    matrix = scores[None, :] if single else scores
    k = min(k, matrix.shape[1])
    if k <= 0:
        empty = np.empty((matrix.shape[0], 0))
        return (empty[0].astype(np.int64), empty[0]) if single else (empty.astype(np.int64), empty)
    candidates = np.argpartition(-matrix, k - 1, axis=1)[:, :k]
    candidate_scores = np.take_along_axis(matrix, candidates, axis=1)
    order = np.lexsort((candidates, -candidate_scores), axis=1)
    positions = np.take_along_axis(candidates, order, axis=1)
    best = np.take_along_axis(candidate_scores, order, axis=1)
    return (positions[0], best[0]) if single else (positions, best)


def exact_search(
    query_embeddings: np.ndarray, doc_embeddings: np.ndarray, k: int, chunk: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force inner-product top-k: ``(indices, scores)``, each ``(n_queries, k)``, best first.

    The ground truth of evaluation runs and of the recall an approximate index is held to.
    """
    if chunk is None:
        chunk = max(1, min(1024, _CHUNK_ELEMENTS // max(len(doc_embeddings), 1)))
    k = min(k, len(doc_embeddings))
    all_indices, all_scores = [], []
    for start in range(0, len(query_embeddings), chunk):
        indices, scores = top_k(query_embeddings[start : start + chunk] @ doc_embeddings.T, k)
        all_indices.append(indices)
        all_scores.append(scores)
    if not all_indices:
        return np.empty((0, k), dtype=np.int64), np.empty((0, k), dtype=np.float32)
    return np.concatenate(all_indices), np.concatenate(all_scores)
