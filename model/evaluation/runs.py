"""Retrieval for evaluation: exact search over the whole corpus for every query of a split."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from denseflow.model.data.beir import Dataset
from denseflow.model.encoder import EncodingSettings, search_embeddings
from denseflow.model.evaluation.metrics import (
    mean_metrics,
    per_query_metrics,
    recall_curve,
    run_from_search,
)
from denseflow.model.index.bm25 import BM25Index, BM25Settings
from denseflow.model.index.topk import exact_search

CURVE_DEPTH = 100


@dataclass
class Evaluation:
    label: str
    metrics: dict[str, float]
    per_query: dict[str, dict[str, float]]
    run: dict[str, dict[str, float]]
    recall_curve: list[float] = field(default_factory=list)


def score_run(label: str, run: dict[str, dict[str, float]], qrels: dict, ks: list[int]) -> Evaluation:
    per_query = per_query_metrics(run, qrels, ks)
    curve = recall_curve(run, qrels, CURVE_DEPTH)
    return Evaluation(label, mean_metrics(per_query), per_query, run, [float(x) for x in curve])


def dense_run(
    model_dir: str | Path,
    dataset: Dataset,
    split: str,
    encoding: EncodingSettings,
    depth: int = CURVE_DEPTH,
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Top-``depth`` documents per query by exact inner product over the whole corpus; documents encoded at
    ``encoding.document_length`` (through the embedding cache), queries at ``encoding.query_length``."""
    queries = dataset.split_queries(split)
    doc_ids, doc_embeddings, query_embeddings = search_embeddings(
        model_dir, dataset.corpus, list(queries.values()), encoding, progress
    )
    indices, scores = exact_search(query_embeddings, doc_embeddings, depth)
    return run_from_search(list(queries), doc_ids, indices, scores)


def bm25_run(
    dataset: Dataset,
    split: str,
    depth: int = CURVE_DEPTH,
    progress: bool = True,
    settings: BM25Settings | None = None,
) -> dict[str, dict[str, float]]:
    return BM25Index(dataset.corpus, settings).search_many(dataset.split_queries(split), depth, progress)
