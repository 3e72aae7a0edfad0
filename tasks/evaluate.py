"""Evaluate: exact search over the corpus for every test (and dev) query; metrics, TREC run files, hybrid fusion,
recall@k plot."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from prefect import task

from denseflow.model.config import PRIOR_RECIPE, BM25Config, ChoicesConfig, EvalConfig, TrainConfig
from denseflow.model.context import RunContext
from denseflow.model.data.beir import Dataset, RejectLog, load_beir
from denseflow.model.encoder import document_length
from denseflow.model.evaluation.choice import choose_on_evidence
from denseflow.model.evaluation.evaluate import (
    NO_DEV_SPLIT,
    EvaluationResult,
    Fusion,
    SplitFigures,
    choose_bm25,
    choose_fusion,
    evaluate_system,
    fused_run,
    split_figures,
)
from denseflow.model.evaluation.metrics import read_trec_run, write_trec_run
from denseflow.model.evaluation.plots import plot_recall_curves
from denseflow.model.evaluation.query_depth import measure_query_depths, query_depth_choice, query_depth_table
from denseflow.model.evaluation.runs import Evaluation, score_run
from denseflow.model.fusion import NEUTRAL_WEIGHT
from denseflow.model.index.bm25 import BM25Settings
from denseflow.model.training.shallow import folder_query_depth
from denseflow.tasks.tracking import (
    log_artifact,
    log_choice,
    log_metrics,
    log_per_query_table,
    run_logger,
    set_tags,
)

HYBRID = "hybrid"
BASE_HYBRID = "zero-shot+bm25"
TRAIN_SPLIT = "train"


def _dataset_and_folder(
    dataset_dir: Path, split: str, dev_split: str | None, context: RunContext, train_split: str = TRAIN_SPLIT
) -> tuple[Dataset, Path]:
    """The dataset judged on the evaluated split, dev (when there is one) and train (the partition reads it), and
    the output folder."""
    out_dir = context.run_dir / "evaluation"
    out_dir.mkdir(parents=True, exist_ok=True)
    splits = [split] + ([dev_split] if dev_split else []) + [train_split]
    return load_beir(Path(dataset_dir), splits, RejectLog()), out_dir


def _record(
    evaluation: Evaluation,
    split: str,
    out_dir: Path,
    run_id: str,
    prefix: str,
    stem: str,
    figures: SplitFigures,
) -> Path:
    """Run file, metrics (all queries, each partition, nDCG@10's bootstrap interval) and per-query figures."""
    run_file = write_trec_run(evaluation.run, out_dir / f"run_{stem}.trec", tag=evaluation.label)
    metrics_file = out_dir / f"metrics_{stem}.json"
    interval, partitions = figures.interval, figures.partitions
    payload = {
        "label": evaluation.label,
        "split": split,
        "queries": figures.queries,
        "metrics": evaluation.metrics,
        "ndcg@10_interval": interval,
        "partitions": {name: part.as_dict() for name, part in partitions.items()},
    }
    metrics_file.write_text(json.dumps(payload, indent=2))
    per_query_file = out_dir / f"per_query_{stem}.json"
    per_query_file.write_text(json.dumps(evaluation.per_query))
    log_metrics(run_id, evaluation.metrics, prefix=prefix)
    log_metrics(run_id, {"ndcg_at_10_ci_low": interval[0], "ndcg_at_10_ci_high": interval[1]}, prefix=prefix)
    # Partition keys name the system even for the trained model (logged unprefixed): trained.unseen_docs.ndcg_at_10.
    system_prefix = prefix if prefix.removeprefix("dev.") else f"{prefix}trained."
    for name, part in partitions.items():
        if part.metrics is not None:
            log_metrics(run_id, part.metrics, prefix=f"{system_prefix}{name}.")
            attractors = {"training_positives_in_top10": part.training_positives_in_top10}
            log_metrics(run_id, attractors, f"{system_prefix}{name}.")
    for path in (run_file, metrics_file):
        log_artifact(run_id, path, "evaluation")
    # Per-query figures go to MLflow once, as a table; the plain file stays in the run folder for the study's report.
    log_per_query_table(run_id, evaluation.per_query, f"evaluation/per_query_{stem}.table.json")
    return run_file


def _result(label: str, recorded: dict[str, tuple[Evaluation, SplitFigures, Path]], split: str) -> EvaluationResult:
    """The result of the splits ``recorded`` (the evaluated split, then dev when there is one)."""
    evaluation, figures, run_file = recorded[split]
    dev = next((entry for name, entry in recorded.items() if name != split), None)
    return EvaluationResult(
        label=label,
        test=figures,
        recall_curve=evaluation.recall_curve,
        run_file=str(run_file),
        dev=dev[1] if dev else None,
        dev_run_file=str(dev[2]) if dev else None,
    )


def _evaluated(
    label: str,
    evaluate_on: Callable[[str], Evaluation],
    dataset: Dataset,
    split: str,
    dev_split: str | None,
    train_split: str,
    out_dir: Path,
    run_id: str,
    prefix: str,
) -> EvaluationResult:
    """``evaluate_on`` each split (the evaluated one, then dev when there is one), each recorded: metrics as
    ``<prefix><metric>`` (dev's as ``dev.<prefix><metric>``), run file, partitions and per-query figures."""
    recorded = {}
    for name in [split] + ([dev_split] if dev_split else []):
        evaluation = evaluate_on(name)
        figures = split_figures(evaluation, dataset, name, split, dev_split, train_split)
        on_dev = name != split
        stem = f"{label}.{name}" if on_dev else label
        run_file = _record(evaluation, name, out_dir, run_id, f"dev.{prefix}" if on_dev else prefix, stem, figures)
        recorded[name] = (evaluation, figures, run_file)
    return _result(label, recorded, split)


@task(name="evaluate")
def evaluate(
    target: str,
    label: str,
    dataset_dir: Path,
    split: str,
    dev_split: str | None,
    settings: EvalConfig,
    context: RunContext,
    metric_prefix: str = "",
    train_split: str = TRAIN_SPLIT,
) -> EvaluationResult:
    """Evaluate ``target`` (a model folder, or ``"bm25"``) on ``split`` and, when given, on ``dev_split``.

    Metrics of ``split`` are logged as ``<prefix><metric>``, dev's as ``dev.<prefix><metric>``, each partition's
    as ``<prefix><partition>.<metric>`` (``trained.unseen_docs.ndcg_at_10``). The result carries the metrics (all
    queries and per partition), the recall curve and the run files (the hybrid reads them).
    """
    dataset, out_dir = _dataset_and_folder(dataset_dir, split, dev_split, context, train_split)

    def evaluate_on(name: str) -> Evaluation:
        return evaluate_system(label, target, dataset, name, context, settings)

    return _evaluated(
        label, evaluate_on, dataset, split, dev_split, train_split, out_dir, context.run_id, metric_prefix
    )


@task(name="hybrid")
def hybrid(
    dense: EvaluationResult,
    bm25: EvaluationResult,
    dataset_dir: Path,
    split: str,
    dev_split: str | None,
    settings: EvalConfig,
    context: RunContext,
    label: str = HYBRID,
    tune_on_dev: bool = True,
    train_split: str = TRAIN_SPLIT,
    choices: ChoicesConfig | None = None,
) -> EvaluationResult:
    """BM25 + dense fusion of two evaluations' runs, at the fusion :func:`choose_fusion` picks: the prior (convex,
    the even mix Bruch et al. found robust) unless dev's paired test overrules it, or the configured weight."""
    choices = choices or ChoicesConfig()
    dataset, out_dir = _dataset_and_folder(dataset_dir, split, dev_split, context, train_split)
    dev_runs = (
        (read_trec_run(Path(dense.dev_run_file)), read_trec_run(Path(bm25.dev_run_file)))
        if dev_split and tune_on_dev and dense.dev_run_file and bm25.dev_run_file
        else None
    )
    dev_queries = len(dataset.qrels[dev_split]) if dev_split else 0
    choice, record = choose_fusion(
        settings,
        dev_split,
        dev_queries,
        tune_on_dev,
        dev_runs,
        dataset.qrels[dev_split] if dev_split else None,
        choices.alpha,
        choices.permutations,
    )
    log_choice(context, record, prefix=f"{metric_label(label)}.")
    if choice.chosen_by == NO_DEV_SPLIT:
        run_logger().warning("no dev split: hybrid uses the even mix, weight %.2f", choice.weight)
    fusion = Fusion.of(choice.weight, choice.method, settings)  # type: ignore[arg-type]

    def fused_on(name: str) -> Evaluation:
        on_dev = name != split
        dense_file, bm25_file = (dense.dev_run_file, bm25.dev_run_file) if on_dev else (dense.run_file, bm25.run_file)
        run = fused_run(read_trec_run(Path(dense_file)), read_trec_run(Path(bm25_file)), fusion)
        return score_run(label, run, dataset.qrels[name], settings.ks)

    prefix = f"{metric_label(label)}."
    result = _evaluated(label, fused_on, dataset, split, dev_split, train_split, out_dir, context.run_id, prefix)
    tags = {"weight": choice.weight, "method": choice.method, "weight_chosen_by": choice.chosen_by}
    set_tags(context.run_id, {f"{metric_label(label)}.{key}": str(value) for key, value in tags.items()})
    log_metrics(context.run_id, {"weight": choice.weight}, prefix=f"{metric_label(label)}.")
    return replace(result, fusion=choice)


def metric_label(label: str) -> str:
    """A system's label as an MLflow key part: ``zero-shot+bm25`` → ``zeroshot_bm25``."""
    return label.replace("-", "").replace("+", "_")


@task(name="plot-recall")
def plot_recall(evaluations: list[EvaluationResult], context: RunContext, title: str) -> str:
    curves = {item.label: item.recall_curve for item in evaluations}
    path = plot_recall_curves(curves, context.run_dir / "evaluation" / "recall_at_k.png", title)
    log_artifact(context.run_id, path, "plots")
    return str(path)


@dataclass(frozen=True)
class Parts:
    """The parts every stage after ingest shares: BM25's settings and the length documents are read at."""

    bm25: BM25Settings
    document_max_seq_length: int
    length_reason: str

    def as_dict(self) -> dict:
        return {
            "bm25": self.bm25.describe(),
            "document_max_seq_length": self.document_max_seq_length,
            "length_reason": self.length_reason,
        }


@task(name="choose-parts")
def choose_parts(
    dataset_dir: Path,
    dev_split: str | None,
    can_choose: bool,
    bm25: BM25Config,
    settings: EvalConfig,
    choices: ChoicesConfig,
    base_model: str,
    context: RunContext,
) -> Parts:
    """BM25's k1/b (the prior unless dev proves otherwise) and the documents' length (from the corpus and the
    base model), decided once so mining, evaluation, the gate and publication share them."""
    dataset = load_beir(Path(dataset_dir), [dev_split] if dev_split else [], RejectLog())
    chosen, record = choose_bm25(dataset, dev_split, bm25, can_choose, choices.alpha, choices.permutations)
    log_choice(context, record)
    texts = [document.full_text for document in dataset.corpus.values()]
    length, reason = document_length(base_model, texts, settings.document_max_seq_length)
    run_logger().info("documents are read at %d tokens (%s); BM25 %s", length, reason, chosen.describe())
    set_tags(context.run_id, {"document_max_seq_length.reason": reason[:250]})
    log_metrics(context.run_id, {"document_max_seq_length": length, "bm25.k1": chosen.k1, "bm25.b": chosen.b})
    return Parts(chosen, length, reason)


@task(name="choose-recipe")
def choose_recipe(
    recipes: dict[str, str],
    dataset_dir: Path,
    dev_split: str,
    settings: EvalConfig,
    choices: ChoicesConfig,
    context: RunContext,
) -> str:
    """The model folder of the recipe that ships: the prior's, unless another recipe's served system (hybrid at the
    prior fusion) beats it on dev by the paired test. Every recipe's dev figure is recorded with the choice."""
    dataset = load_beir(Path(dataset_dir), [dev_split], RejectLog())
    fusion = Fusion.of(NEUTRAL_WEIGHT, settings.fusion, settings)
    per_query = {
        name: evaluate_system(name, model_dir, dataset, dev_split, context, settings, fusion).per_query["ndcg@10"]
        for name, model_dir in recipes.items()
    }
    choice = choose_on_evidence("recipe", PRIOR_RECIPE, per_query, choices.alpha, choices.permutations)
    log_choice(context, choice)
    log_metrics(
        context.run_id,
        {
            f"recipe.{name}.dev_served_ndcg_at_10": sum(values.values()) / max(len(values), 1)
            for name, values in per_query.items()
        },
    )
    return recipes[choice.used]


@task(name="choose-query-layers")
def choose_query_layers(
    full_model: str,
    towers: dict[int, str],
    dataset_dir: Path,
    split: str,
    dev_split: str | None,
    can_choose: bool,
    train: TrainConfig,
    settings: EvalConfig,
    context: RunContext,
    train_split: str = TRAIN_SPLIT,
) -> str:
    """The model whose query tower ships (model/evaluation/query_depth.py): the smallest depth within
    ``train.query_layers_tolerance`` of the full tower's served dev nDCG@10 (the full tower when dev is too small to
    tell). Test, all and unseen, and the one-query encode time are reported for every depth; they choose nothing."""
    if not towers:
        return full_model
    full_depth = folder_query_depth(full_model)
    candidates = {full_depth: full_model} | towers
    dataset = load_beir(Path(dataset_dir), [split, train_split] + ([dev_split] if dev_split else []), RejectLog())
    rows = measure_query_depths(candidates, dataset, split, dev_split, train_split, settings, context)
    dev_queries = len(dataset.qrels[dev_split]) if dev_split else 0
    choice = query_depth_choice(rows, full_depth, train.query_layers_tolerance, can_choose, dev_split, dev_queries)
    log_choice(context, choice)
    for row in rows:
        log_metrics(context.run_id, row.metrics(), prefix=f"query_layers.{row.layers}.")
    used = int(choice.used)
    report = context.run_dir / "query_layers.md"
    report.write_text(query_depth_table(rows, used, choice.reason), encoding="utf-8")
    log_artifact(context.run_id, report)
    run_logger().info("query tower: %d layers (%s)", used, choice.reason)
    return candidates[used]


__all__ = [
    "EvaluationResult",
    "Parts",
    "choose_parts",
    "choose_query_layers",
    "choose_recipe",
    "evaluate",
    "hybrid",
    "plot_recall",
]
