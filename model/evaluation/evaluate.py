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
from dataclasses import dataclass, field, replace

from denseflow.model.config import BM25Config, EvalConfig
from denseflow.model.context import RunContext
from denseflow.model.data.beir import Dataset
from denseflow.model.evaluation.choice import Choice, choose_on_evidence, prior_only
from denseflow.model.evaluation.metrics import per_query_metrics
from denseflow.model.evaluation.partition import (
    UNSEEN,
    PartitionFigures,
    bootstrap_interval,
    judged_documents,
    report_partitions,
    seen_document_split,
)
from denseflow.model.evaluation.runs import Evaluation, bm25_run, dense_run, score_run
from denseflow.model.fusion import NEUTRAL_WEIGHT, FusionMethod, fuse_runs
from denseflow.model.index.bm25 import BM25Settings

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
        return bm25_run(dataset, split, settings=context.bm25)
    run = dense_run(target, dataset, split, replace(context.encoding, batch_size=settings.batch_size))
    return run if fusion is None else fused_run(run, bm25_run(dataset, split, settings=context.bm25), fusion)


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
    partitions: dict[str, PartitionFigures]
    interval: tuple[float, float]
    queries: int
    # nDCG@10 per query: what paired tests (choices on dev, the gate) compare.
    per_query: dict[str, float] = field(default_factory=dict, repr=False)
    unseen: tuple[str, ...] = field(default=(), repr=False)  # the unseen-document partition's query ids


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
        per_query=dict(evaluation.per_query.get("ndcg@10", {})),
        unseen=tuple(parts.get(UNSEEN, ())),
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
    def partitions(self) -> dict[str, PartitionFigures]:
        return self.test.partitions

    @property
    def dev_metrics(self) -> dict[str, float] | None:
        return self.dev.metrics if self.dev else None


def fusion_key(method: str, weight: float) -> str:
    """An option's name in a choice record: ``convex@0.5``."""
    return f"{method}@{weight:g}"


def choose_fusion(
    settings: EvalConfig,
    dev_split: str | None,
    dev_queries: int,
    tune_on_dev: bool,
    dev_runs: tuple[Run, Run] | None,
    dev_qrels: Mapping[str, Mapping[str, int]] | None,
    alpha: float = 0.05,
    permutations: int = 10_000,
) -> tuple[FusionChoice, Choice]:
    """The hybrid's fusion method and dense weight, and the record of how they were chosen.

    The prior is ``eval.fusion`` at the even weight (Bruch et al. 2023 find the even convex mix robust; a weight
    tuned on a few dozen queries is not). ``eval.fusion_weight`` configures the weight outright. Otherwise, with a
    dev split large enough (``tune_on_dev``), every method × weight of ``eval.fusion_methods`` ×
    ``eval.fusion_grid`` is scored on dev and the best replaces the prior only when a paired test says it beats it
    (:func:`~denseflow.model.evaluation.choice.choose_on_evidence`).
    """
    prior = fusion_key(settings.fusion, NEUTRAL_WEIGHT)
    if settings.fusion_weight is not None:
        configured = FusionChoice(settings.fusion_weight, settings.fusion, "configured")
        return configured, prior_only("fusion", fusion_key(settings.fusion, settings.fusion_weight), "configured")
    if not (dev_split and tune_on_dev and dev_runs is not None and dev_qrels is not None):
        reason = (
            NO_DEV_SPLIT
            if not dev_split
            else f"prior: the even mix ({dev_queries} dev queries are too few to choose on)"
        )
        return FusionChoice(NEUTRAL_WEIGHT, settings.fusion, reason), prior_only("fusion", prior, reason, alpha)
    options: dict[str, tuple[str, float]] = {prior: (settings.fusion, NEUTRAL_WEIGHT)}
    for method in settings.fusion_methods:
        for weight in settings.fusion_grid:
            options.setdefault(fusion_key(method, weight), (method, weight))
    per_query = {
        key: per_query_metrics(
            fuse_runs(*dev_runs, weight, method, settings.rrf_k, settings.fusion_depth),  # type: ignore[arg-type]
            dev_qrels,
            [10],
        )["ndcg@10"]
        for key, (method, weight) in options.items()
    }
    choice = choose_on_evidence("fusion", prior, per_query, alpha, permutations)
    method, weight = options[choice.used]
    return FusionChoice(weight, method, f"{dev_split}: {choice.reason}"), choice


def bm25_key(k1: float, b: float) -> str:
    return f"k1={k1:g},b={b:g}"


def choose_bm25(
    dataset: Dataset,
    dev_split: str | None,
    config: BM25Config,
    can_choose: bool,
    alpha: float = 0.05,
    permutations: int = 10_000,
) -> tuple[BM25Settings, Choice]:
    """BM25's k1/b: the prior (``bm25.k1``/``bm25.b``, Anserini's BEIR setting), replaced by one of
    ``bm25.alternatives`` only when it beats the prior on dev by a paired test. The analyzer is not chosen: stemming
    and stopwords are the field's settings, and dev moved the other way from test on them (docs/results.md)."""
    prior = config.settings()
    prior_key = bm25_key(prior.k1, prior.b)
    if not dev_split or not can_choose or not config.alternatives:
        reason = "no dev split large enough to choose on" if config.alternatives else "no alternatives configured"
        return prior, prior_only("bm25", prior_key, f"prior ({reason})", alpha)
    options = {prior_key: prior} | {bm25_key(k1, b): config.settings(k1, b) for k1, b in config.alternatives}
    per_query = {
        key: per_query_metrics(
            bm25_run(dataset, dev_split, progress=False, settings=settings), dataset.qrels[dev_split], [10]
        )["ndcg@10"]
        for key, settings in options.items()
    }
    choice = choose_on_evidence("bm25", prior_key, per_query, alpha, permutations)
    return options[choice.used], choice
