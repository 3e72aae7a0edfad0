"""Seen-document and unseen-document queries: the figures that say whether a retrain generalises.

A query is *seen-document* when any of its judged documents is also judged for a query the run trained or
selected on (train, and for test also dev); otherwise *unseen-document*. A retrain is for documents the model has
not been trained on, so every report shows both partitions beside the whole split: on collections whose queries
come in families over the same documents, the whole-split gain can be memorisation alone (a model that drags its
training positives up for every query scores higher on the seen partition and lower on the unseen one).

A partition of fewer than :data:`MIN_PARTITION_QUERIES` queries gets no figure, only its count: a mean over a
dozen queries moves by several points when one query changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from denseflow.model.evaluation.metrics import mean_metrics

Qrels = Mapping[str, Mapping[str, int]]
SEEN = "seen_docs"
UNSEEN = "unseen_docs"
PARTITIONS = (SEEN, UNSEEN)
MIN_PARTITION_QUERIES = 20
BOOTSTRAP_SAMPLES = 2000


def judged_documents(qrels_per_split: Iterable[Qrels]) -> set[str]:
    """Every document judged relevant (score > 0) for some query of these splits."""
    return {
        doc_id
        for qrels in qrels_per_split
        for judged in qrels.values()
        for doc_id, score in judged.items()
        if score > 0
    }


def partition_queries(qrels: Qrels, seen_documents: set[str]) -> dict[str, list[str]]:
    """``{"seen_docs": [...], "unseen_docs": [...]}``: the queries of ``qrels`` split by their judged documents."""
    parts: dict[str, list[str]] = {SEEN: [], UNSEEN: []}
    for query_id in sorted(qrels):
        judged = {doc_id for doc_id, score in qrels[query_id].items() if score > 0}
        parts[SEEN if judged & seen_documents else UNSEEN].append(query_id)
    return parts


def partition_metrics(
    per_query: Mapping[str, Mapping[str, float]], parts: Mapping[str, Sequence[str]]
) -> dict[str, dict]:
    """Per partition: ``{"queries": n, "metrics": {...}}``, or ``metrics`` None with a ``note`` when it is tiny."""
    result: dict[str, dict] = {}
    for name, queries in parts.items():
        entry: dict = {"queries": len(queries), "metrics": None}
        if len(queries) >= MIN_PARTITION_QUERIES:
            chosen = set(queries)
            entry["metrics"] = mean_metrics(
                {metric: {q: v for q, v in values.items() if q in chosen} for metric, values in per_query.items()}
            )
        else:
            entry["note"] = f"{len(queries)} queries (< {MIN_PARTITION_QUERIES}): too few for a figure"
        result[name] = entry
    return result


def bootstrap_interval(values: Sequence[float], seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over queries (resampled with replacement)."""
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = array[rng.integers(0, array.size, size=(BOOTSTRAP_SAMPLES, array.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def attractor_count(
    run: Mapping[str, Mapping[str, float]], queries: Sequence[str], training_positives: set[str], k: int = 10
) -> float:
    """Mean number of training-positive documents in the top ``k`` of ``queries``.

    On unseen-document queries every such document is a wrong answer the training pulled up: the count rises
    when fine-tuning turns training positives into attractors for every query.
    """
    counts = []
    for query_id in queries:
        scores = run.get(query_id, {})
        top = sorted(scores, key=lambda doc_id: (-scores[doc_id], doc_id))[:k]
        counts.append(sum(doc_id in training_positives for doc_id in top))
    return float(np.mean(counts)) if counts else float("nan")


def seen_document_split(eval_qrels: Qrels, trained_or_selected_on: Iterable[Qrels]) -> dict[str, list[str]]:
    """The partition of ``eval_qrels``' queries against the judged documents of the splits the run used."""
    return partition_queries(eval_qrels, judged_documents(trained_or_selected_on))


@dataclass(frozen=True)
class PartitionFigures:
    """One seen-/unseen-document partition of a split's queries: its size, its mean metrics (None, with a ``note``,
    when it is too small for a figure), the training positives in its top 10 and nDCG@10's bootstrap interval."""

    queries: int
    metrics: dict[str, float] | None
    note: str | None = None
    training_positives_in_top10: float | None = None
    ndcg_interval: tuple[float, float] | None = None

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape of ``metrics_<system>.json`` and the retrain summary."""
        data: dict[str, Any] = {"queries": self.queries, "metrics": self.metrics}
        if self.note is not None:
            data["note"] = self.note
        if self.metrics is not None:
            data["training_positives_in_top10"] = self.training_positives_in_top10
            data["ndcg@10_interval"] = self.ndcg_interval
        return data


def report_partitions(
    per_query: Mapping[str, Mapping[str, float]],
    run: Mapping[str, Mapping[str, float]],
    parts: Mapping[str, Sequence[str]],
    training_positives: set[str],
) -> dict[str, PartitionFigures]:
    """:func:`partition_metrics` plus, per partition, the training positives in the top 10 (attractors) and the
    bootstrap 95 % interval of nDCG@10."""
    ndcg = per_query.get("ndcg@10", {})
    report: dict[str, PartitionFigures] = {}
    for name, entry in partition_metrics(per_query, parts).items():
        figures = PartitionFigures(entry["queries"], entry["metrics"], entry.get("note"))
        if figures.metrics is not None:
            queries = parts[name]
            figures = replace(
                figures,
                training_positives_in_top10=attractor_count(run, queries, training_positives),
                ndcg_interval=bootstrap_interval([ndcg[q] for q in queries if q in ndcg]),
            )
        report[name] = figures
    return report
