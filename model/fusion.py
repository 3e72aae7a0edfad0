"""Hybrid retrieval: BM25 and dense rankings fused into one.

BM25 and a dense retriever fail on different queries (exact terms versus paraphrase), so fusing their rankings
beats either alone across BEIR (Thakur et al. 2021; Bruch et al. 2023, "An analysis of fusion functions for hybrid
retrieval", which finds a tuned convex combination of normalised scores at least as good as RRF). Two methods:

- ``convex``: ``weight · dense + (1 − weight) · bm25`` on each query's min-max normalised scores; a document one
  system did not return scores 0 there. The weight is tuned on dev.
- ``zscore``: the same convex combination over scores normalised by their distribution instead of their extremes,
  ``(s − (μ − 3σ)) / 6σ`` clipped to [0, 1] per query (Qdrant's distribution-based score fusion, DBSF): one
  outlying top score does not squash the rest.
- ``rrf``: reciprocal rank fusion, ``weight / (k + rank_dense) + (1 − weight) / (k + rank_bm25)``
  (Cormack et al. 2009, k = 60); needs no score calibration.

The prior is ``convex`` at the even weight; which method and weight ship is a choice dev makes only on evidence
(model/evaluation/choice.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np

from denseflow.model.evaluation.metrics import ranked

Run = Mapping[str, Mapping[str, float]]
FusionMethod = Literal["convex", "zscore", "rrf"]
FUSION_METHODS: tuple[str, ...] = ("convex", "zscore", "rrf")
NEUTRAL_WEIGHT = 0.5


def _min_max(scores: Mapping[str, float]) -> dict[str, float]:
    if not scores:
        return {}
    low, high = min(scores.values()), max(scores.values())
    if high <= low:
        return dict.fromkeys(scores, 1.0)
    return {doc_id: (score - low) / (high - low) for doc_id, score in scores.items()}


def _distribution(scores: Mapping[str, float]) -> dict[str, float]:
    if not scores:
        return {}
    values = np.fromiter(scores.values(), dtype=np.float64, count=len(scores))
    mean, spread = float(values.mean()), float(values.std())
    if spread <= 0:
        return dict.fromkeys(scores, 1.0)
    low = mean - 3 * spread
    return {doc_id: min(1.0, max(0.0, (score - low) / (6 * spread))) for doc_id, score in scores.items()}


def _reciprocal_ranks(scores: Mapping[str, float], k: int) -> dict[str, float]:
    return {doc_id: 1.0 / (k + rank) for rank, doc_id in enumerate(ranked(scores), start=1)}


def fuse_query(
    dense: Mapping[str, float],
    bm25: Mapping[str, float],
    weight: float,
    method: FusionMethod = "convex",
    rrf_k: int = 60,
    depth: int | None = None,
) -> dict[str, float]:
    """One query's fused scores over the union of both systems' documents (top ``depth`` of the fusion)."""
    if not 0 <= weight <= 1:
        raise ValueError(f"fusion weight {weight} is outside [0, 1]")
    # A document BM25 scores 0 shares no term with the query: ranked only to fill the top-N, it is no evidence.
    bm25 = {doc_id: score for doc_id, score in bm25.items() if score > 0}
    if method == "rrf":
        dense_part, bm25_part = _reciprocal_ranks(dense, rrf_k), _reciprocal_ranks(bm25, rrf_k)
    elif method == "zscore":
        dense_part, bm25_part = _distribution(dense), _distribution(bm25)
    elif method == "convex":
        dense_part, bm25_part = _min_max(dense), _min_max(bm25)
    else:
        raise ValueError(f"unknown fusion method {method!r} (one of {', '.join(FUSION_METHODS)})")
    fused = {
        doc_id: weight * dense_part.get(doc_id, 0.0) + (1 - weight) * bm25_part.get(doc_id, 0.0)
        for doc_id in dense_part.keys() | bm25_part.keys()
    }
    if depth is not None and len(fused) > depth:
        fused = {doc_id: fused[doc_id] for doc_id in ranked(fused)[:depth]}
    return fused


def fuse_runs(
    dense: Run, bm25: Run, weight: float, method: FusionMethod = "convex", rrf_k: int = 60, depth: int | None = 100
) -> dict[str, dict[str, float]]:
    """Fuse two runs query by query (a query only one system answered keeps that system's ranking)."""
    return {
        query_id: fuse_query(dense.get(query_id, {}), bm25.get(query_id, {}), weight, method, rrf_k, depth)
        for query_id in dense.keys() | bm25.keys()
    }
