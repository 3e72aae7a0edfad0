"""One system evaluated on one split: the entry point the evaluate stage and the promotion gate's re-evaluation of
production both call, so a figure means the same wherever it is measured.

A *system* is BM25 alone (``target == "bm25"``), a dense model (``target`` is its folder), or a dense model fused
with BM25 (:mod:`denseflow.model.fusion`, at a :class:`Fusion`'s weight and method). Retrieval is exact search
over the whole corpus (model/evaluation/runs.py); scoring is model/evaluation/metrics.py; the seen-/unseen-document
partition and the bootstrap interval are model/evaluation/partition.py.

The results are frozen dataclasses of paths, labels and figures, so they cross Prefect task boundaries and hash.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from denseflow.model.config import EvalConfig
from denseflow.model.context import RunContext
from denseflow.model.data.beir import Dataset
from denseflow.model.evaluation.partition import (
    bootstrap_interval,
    judged_documents,
    report_partitions,
    seen_document_split,
)
from denseflow.model.evaluation.runs import Evaluation, bm25_run, dense_run, score_run
from denseflow.model.fusion import NEUTRAL_WEIGHT, FusionMethod, fuse_runs, tune_weight

BM25 = "bm25"
Run = Mapping[str, Mapping[str, float]]
NO_DEV_SPLIT = "even mix (no dev split)"


@dataclass(frozen=True)
class Fusion:
    """How a dense run is fused with BM25's: the dense weight and the method, with the evaluation's depth."""

    weight: float
    method: FusionMethod
    rrf_k: int = 60
    depth: int | None = 100

    @classmethod
    def of(cls, weight: float, method: FusionMethod, settings: EvalConfig) -> Fusion:
        return cls(weight, method, settings.rrf_k, settings.fusion_depth)


def fused_run(dense: Run, bm25: Run, fusion: Fusion) -> dict[str, dict[str, float]]:
    return fuse_runs(dense, bm25, fusion.weight, fusion.method, fusion.rrf_k, fusion.depth)


def system_run(
    target: str,
    dataset: Dataset,
    split: str,
    context: RunContext,
    settings: EvalConfig,
    fusion: Fusion | None = None,
) -> dict[str, dict[str, float]]:
    """The ranking ``target`` returns for every query of ``split``: BM25's, the dense model's, or their fusion."""
    if target == BM25:
        return bm25_run(dataset, split)
    run = dense_run(
        target, dataset, split, context.cache_dir, context.max_seq_length, settings.batch_size, context.precision
    )
    return run if fusion is None else fused_run(run, bm25_run(dataset, split), fusion)


def evaluate_system(
    label: str,
    target: str,
    dataset: Dataset,
    split: str,
    context: RunContext,
    settings: EvalConfig,
    fusion: Fusion | None = None,
) -> Evaluation:
    """``target``'s run on ``split`` (see :func:`system_run`) scored against the split's judgments."""
    return score_run(
        label, system_run(target, dataset, split, context, settings, fusion), dataset.qrels[split], settings.ks
    )


@dataclass(frozen=True)
class SplitFigures:
    """What is reported of one split's evaluation: all queries, each seen-/unseen-document partition, nDCG@10's
    bootstrap interval and the number of queries."""

    metrics: dict[str, float]
    partitions: dict[str, dict]
    interval: tuple[float, float]
    queries: int


def split_figures(
    evaluation: Evaluation, dataset: Dataset, name: str, split: str, dev_split: str | None, train_split: str
) -> SplitFigures:
    """The figures of ``evaluation`` on split ``name``. Its queries are partitioned against the judged documents
    of train and dev when ``name`` is the evaluated split, of train alone when it is dev."""
    used = [dataset.qrels[train_split]] + ([dataset.qrels[dev_split]] if dev_split and name == split else [])
    parts = seen_document_split(dataset.qrels[name], used)
    training_positives = judged_documents([dataset.qrels[train_split]])
    return SplitFigures(
        metrics=evaluation.metrics,
        partitions=report_partitions(evaluation.per_query, evaluation.run, parts, training_positives),
        interval=bootstrap_interval(list(evaluation.per_query.get("ndcg@10", {}).values())),
        queries=len(next(iter(evaluation.per_query.values()), {})),
    )


@dataclass(frozen=True)
class FusionChoice:
    """The fusion a hybrid was evaluated at, and why that weight."""

    weight: float
    method: str
    chosen_by: str


@dataclass(frozen=True)
class EvaluationResult:
    """One system's evaluation: the test split's figures and recall curve, dev's figures when there is a dev
    split, the run files (a hybrid fuses them), and for a hybrid the fusion it was evaluated at."""

    label: str
    test: SplitFigures
    recall_curve: list[float]
    run_file: str
    dev: SplitFigures | None = None
    dev_run_file: str | None = None
    fusion: FusionChoice | None = None

    @property
    def metrics(self) -> dict[str, float]:
        return self.test.metrics

    @property
    def partitions(self) -> dict[str, dict]:
        return self.test.partitions

    @property
    def dev_metrics(self) -> dict[str, float] | None:
        return self.dev.metrics if self.dev else None


def choose_fusion(
    settings: EvalConfig,
    dev_split: str | None,
    dev_queries: int,
    tune_on_dev: bool,
    dev_runs: tuple[Run, Run] | None,
    dev_qrels: Mapping[str, Mapping[str, int]] | None,
) -> tuple[FusionChoice, dict[float, float] | None]:
    """The hybrid's dense weight and the dev curve it was read from (None when not tuned).

    Configured when ``eval.fusion_weight`` is set; the even mix (the prior Bruch et al. found robust) when dev is
    too small to choose on (``tune_on_dev`` False) or absent; else tuned on dev's ``(dense, bm25)`` runs.
    """
    if settings.fusion_weight is not None:
        return FusionChoice(settings.fusion_weight, settings.fusion, "configured"), None
    if dev_split and not tune_on_dev:
        reason = f"prior: the even mix ({dev_queries} dev queries are too few to tune on)"
        return FusionChoice(NEUTRAL_WEIGHT, settings.fusion, reason), None
    if dev_split and dev_runs is not None and dev_qrels is not None:
        weight, curve = tune_weight(*dev_runs, dev_qrels, settings.fusion, settings.rrf_k)
        return FusionChoice(weight, settings.fusion, f"tuned on {dev_split}"), curve
    return FusionChoice(NEUTRAL_WEIGHT, settings.fusion, NO_DEV_SPLIT), None
