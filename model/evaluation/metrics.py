"""Retrieval metrics with BEIR's definitions and TREC run files (exact search: ``denseflow.model.index.topk``).

A *run* is ``{query_id: {doc_id: score}}``; *qrels* are ``{query_id: {doc_id: relevance}}``. A document
is relevant when its relevance is > 0. Ranks follow score, highest first.

- recall@k  = |relevant ∩ top k| / |relevant|                       (pytrec_eval ``recall_k``)
- nDCG@k    = Σ_{i≤k} rel_i / log2(i + 1), divided by the ideal DCG  (pytrec_eval ``ndcg_cut_k``, linear gain)
- MRR@k     = 1 / rank of the first relevant document in the top k   (BEIR's ``mrr``), 0 when none

Every query of the qrels counts; one missing from the run scores 0. Values are means over queries.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]


def ranked(docs: Mapping[str, float]) -> list[str]:
    return [doc_id for doc_id, _ in sorted(docs.items(), key=lambda item: (-item[1], item[0]))]


def per_query_metrics(run: Run, qrels: Qrels, ks: Iterable[int] = (1, 5, 10, 20, 100)) -> dict[str, dict[str, float]]:
    """``{metric: {query_id: value}}`` for recall@k (each k), ndcg@10 and mrr@10."""
    ks = sorted(set(ks))
    out: dict[str, dict[str, float]] = {f"recall@{k}": {} for k in ks}
    out["ndcg@10"], out["mrr@10"] = {}, {}
    for query_id, judged in qrels.items():
        relevant = {doc_id for doc_id, rel in judged.items() if rel > 0}
        ranking = ranked(run.get(query_id, {}))
        for k in ks:
            hits = sum(1 for doc_id in ranking[:k] if doc_id in relevant)
            out[f"recall@{k}"][query_id] = hits / len(relevant) if relevant else 0.0
        out["ndcg@10"][query_id] = ndcg(ranking, judged, 10)
        first = next((rank for rank, doc_id in enumerate(ranking[:10], start=1) if doc_id in relevant), None)
        out["mrr@10"][query_id] = 1.0 / first if first else 0.0
    return out


def ndcg(ranking: list[str], judged: Mapping[str, int], k: int) -> float:
    gains = [max(judged.get(doc_id, 0), 0) for doc_id in ranking[:k]]
    dcg = sum(gain / np.log2(rank + 1) for rank, gain in enumerate(gains, start=1))
    ideal_gains = sorted((rel for rel in judged.values() if rel > 0), reverse=True)[:k]
    ideal = sum(gain / np.log2(rank + 1) for rank, gain in enumerate(ideal_gains, start=1))
    return float(dcg / ideal) if ideal > 0 else 0.0


def mean_metrics(per_query: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    return {name: float(np.mean(list(values.values()))) if values else 0.0 for name, values in per_query.items()}


def evaluate_run(run: Run, qrels: Qrels, ks: Iterable[int] = (1, 5, 10, 20, 100)) -> dict[str, float]:
    return mean_metrics(per_query_metrics(run, qrels, ks))


def recall_curve(run: Run, qrels: Qrels, max_k: int = 100) -> np.ndarray:
    """Mean recall@k for k = 1..max_k (index 0 is k=1): the line of the recall@k plot."""
    curves = []
    for query_id, judged in qrels.items():
        relevant = {doc_id for doc_id, rel in judged.items() if rel > 0}
        if not relevant:
            continue
        hits = np.array([doc_id in relevant for doc_id in ranked(run.get(query_id, {}))[:max_k]], dtype=float)
        hits = np.pad(hits, (0, max_k - len(hits)))
        curves.append(np.cumsum(hits) / len(relevant))
    return np.mean(curves, axis=0) if curves else np.zeros(max_k)


def run_from_search(
    query_ids: list[str], doc_ids: list[str], indices: np.ndarray, scores: np.ndarray
) -> dict[str, dict[str, float]]:
    return {
        query_id: {doc_ids[i]: float(s) for i, s in zip(row_indices, row_scores, strict=True)}
        for query_id, row_indices, row_scores in zip(query_ids, indices, scores, strict=True)
    }


def write_trec_run(run: Run, path: Path, tag: str) -> Path:
    """TREC format: ``query_id Q0 doc_id rank score tag``, one line per retrieved document."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for query_id, docs in run.items():
            for rank, doc_id in enumerate(ranked(docs), start=1):
                out.write(f"{query_id} Q0 {doc_id} {rank} {docs[doc_id]:.6f} {tag}\n")
    return path


def read_trec_run(path: Path) -> dict[str, dict[str, float]]:
    run: dict[str, dict[str, float]] = {}
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            query_id, _, doc_id, _, score, _ = line.split()
            run.setdefault(query_id, {})[doc_id] = float(score)
    return run
