"""Evaluate: exact search over the corpus for every test (and dev) query; metrics, TREC run files, hybrid fusion,
recall@k plot."""

from __future__ import annotations

import json
from pathlib import Path

from mlflow.tracking import MlflowClient
from prefect import task

from denseflow.model.config import EvalConfig
from denseflow.model.context import RunContext
from denseflow.model.data.beir import Dataset, RejectLog, load_beir
from denseflow.model.evaluation.hybrid import NEUTRAL_WEIGHT, fuse_runs, tune_weight
from denseflow.model.evaluation.metrics import read_trec_run, write_trec_run
from denseflow.model.evaluation.partition import (
    bootstrap_interval,
    judged_documents,
    report_partitions,
    seen_document_split,
)
from denseflow.model.evaluation.plots import plot_recall_curves
from denseflow.model.evaluation.runs import Evaluation, bm25_run, dense_run, score_run
from denseflow.tasks.tracking import log_artifact, log_metrics, run_logger

BM25 = "bm25"
HYBRID = "hybrid"
BASE_HYBRID = "zero-shot+bm25"
TRAIN_SPLIT = "train"


def _splits_and_folder(
    dataset_dir: Path, split: str, dev_split: str | None, context: RunContext, train_split: str = TRAIN_SPLIT
) -> tuple[list[str], Dataset, Path]:
    """The evaluated split (then dev, when there is one), the dataset judged on them and on train (the partition
    reads it), and the output folder."""
    splits = [split] + ([dev_split] if dev_split else [])
    out_dir = context.run_dir / "evaluation"
    out_dir.mkdir(parents=True, exist_ok=True)
    return splits, load_beir(Path(dataset_dir), [*splits, train_split], RejectLog()), out_dir


def _partitions(dataset: Dataset, name: str, split: str, dev_split: str | None, train_split: str) -> dict:
    """Seen-/unseen-document queries of ``name``: against train and dev for the evaluated split, train for dev."""
    used = [dataset.qrels[train_split]] + ([dataset.qrels[dev_split]] if dev_split and name == split else [])
    return seen_document_split(dataset.qrels[name], used)


def _record(
    evaluation: Evaluation,
    split: str,
    out_dir: Path,
    run_id: str,
    prefix: str,
    stem: str,
    figures: dict,
) -> Path:
    """Run file, metrics (all queries, each partition, nDCG@10's bootstrap interval) and per-query figures."""
    run_file = write_trec_run(evaluation.run, out_dir / f"run_{stem}.trec", tag=evaluation.label)
    metrics_file = out_dir / f"metrics_{stem}.json"
    interval, partitions = figures["interval"], figures["partitions"]
    payload = {
        "label": evaluation.label,
        "split": split,
        "queries": figures["queries"],
        "metrics": evaluation.metrics,
        "ndcg@10_interval": interval,
        "partitions": partitions,
    }
    metrics_file.write_text(json.dumps(payload, indent=2))
    per_query_file = out_dir / f"per_query_{stem}.json"
    per_query_file.write_text(json.dumps(evaluation.per_query))
    log_metrics(run_id, evaluation.metrics, prefix=prefix)
    log_metrics(run_id, {"ndcg_at_10_ci_low": interval[0], "ndcg_at_10_ci_high": interval[1]}, prefix=prefix)
    # Partition keys name the system even for the trained model (logged unprefixed): trained.unseen_docs.ndcg_at_10.
    system_prefix = prefix if prefix.removeprefix("dev.") else f"{prefix}trained."
    for part, entry in partitions.items():
        if entry["metrics"] is not None:
            log_metrics(run_id, entry["metrics"], prefix=f"{system_prefix}{part}.")
            log_metrics(
                run_id, {"training_positives_in_top10": entry["training_positives_in_top10"]}, f"{system_prefix}{part}."
            )
    for path in (run_file, metrics_file, per_query_file):
        log_artifact(run_id, path, "evaluation")
    return run_file


def _scored(
    label: str,
    run: dict,
    dataset: Dataset,
    name: str,
    split: str,
    dev_split: str | None,
    train_split: str,
    ks: list[int],
) -> tuple[Evaluation, dict[str, dict]]:
    evaluation = score_run(label, run, dataset.qrels[name], ks)
    parts = _partitions(dataset, name, split, dev_split, train_split)
    training_positives = judged_documents([dataset.qrels[train_split]])
    return evaluation, report_partitions(evaluation.per_query, evaluation.run, parts, training_positives)


def _figures(evaluation: Evaluation, partitions: dict[str, dict]) -> dict:
    """What the flow and the gate read of one split's evaluation, and what ``_record`` writes of it."""
    return {
        "metrics": evaluation.metrics,
        "partitions": partitions,
        "interval": bootstrap_interval(list(evaluation.per_query.get("ndcg@10", {}).values())),
        "queries": len(next(iter(evaluation.per_query.values()), {})),
    }


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
) -> dict:
    """Evaluate ``target`` (a model folder, or ``"bm25"``) on ``split`` and, when given, on ``dev_split``.

    Metrics of ``split`` are logged as ``<prefix><metric>``, dev's as ``dev.<prefix><metric>``, each partition's
    as ``<prefix><partition>.<metric>`` (``trained.unseen_docs.ndcg_at_10``). Returns the metrics (all queries
    and per partition), the recall curve and the run files (the hybrid reads them).
    """
    splits, dataset, out_dir = _splits_and_folder(dataset_dir, split, dev_split, context, train_split)
    result: dict = {"label": label}
    for name in splits:
        if target == BM25:
            run = bm25_run(dataset, name)
        else:
            run = dense_run(
                target,
                dataset,
                name,
                context.cache_dir,
                context.max_seq_length,
                settings.batch_size,
                context.precision,
            )
        evaluation, partitions = _scored(label, run, dataset, name, split, dev_split, train_split, settings.ks)
        on_dev = name != split
        stem = f"{label}.{name}" if on_dev else label
        prefix = f"dev.{metric_prefix}" if on_dev else metric_prefix
        figures = _figures(evaluation, partitions)
        run_file = _record(evaluation, name, out_dir, context.run_id, prefix, stem, figures)
        if on_dev:
            result |= {"dev": figures, "dev_metrics": evaluation.metrics, "dev_run_file": str(run_file)}
        else:
            result |= figures | {"recall_curve": evaluation.recall_curve, "run_file": str(run_file)}
    return result


@task(name="hybrid")
def hybrid(
    dense: dict,
    bm25: dict,
    dataset_dir: Path,
    split: str,
    dev_split: str | None,
    settings: EvalConfig,
    context: RunContext,
    label: str = HYBRID,
    tune_on_dev: bool = True,
    train_split: str = TRAIN_SPLIT,
) -> dict:
    """BM25 + dense fusion of two evaluations' runs; the dense weight is tuned on dev unless configured, or unless
    dev is too small to choose on (``tune_on_dev`` False: the even mix, the prior Bruch et al. found robust)."""
    splits, dataset, out_dir = _splits_and_folder(dataset_dir, split, dev_split, context, train_split)
    if settings.fusion_weight is not None:
        weight, chosen_by = settings.fusion_weight, "configured"
    elif dev_split and not tune_on_dev:
        weight = NEUTRAL_WEIGHT
        chosen_by = f"prior: the even mix ({len(dataset.qrels[dev_split])} dev queries are too few to tune on)"
    elif dev_split and "dev_run_file" in dense and "dev_run_file" in bm25:
        weight, curve = tune_weight(
            read_trec_run(Path(dense["dev_run_file"])),
            read_trec_run(Path(bm25["dev_run_file"])),
            dataset.qrels[dev_split],
            settings.fusion,
            settings.rrf_k,
        )
        chosen_by = f"tuned on {dev_split}"
        curve_file = out_dir / f"{label}_weight_curve.json"
        curve_file.write_text(json.dumps({"split": dev_split, "metric": "ndcg@10", "curve": curve}, indent=2))
        log_artifact(context.run_id, curve_file, "evaluation")
    else:
        weight, chosen_by = NEUTRAL_WEIGHT, "even mix (no dev split)"
        run_logger().warning("no dev split: hybrid uses the even mix, weight %.2f", weight)
    result = {"label": label, "weight": weight, "method": settings.fusion, "weight_chosen_by": chosen_by}
    for name in splits:
        on_dev = name != split
        key = "dev_run_file" if on_dev else "run_file"
        run = fuse_runs(
            read_trec_run(Path(dense[key])),
            read_trec_run(Path(bm25[key])),
            weight,
            settings.fusion,
            settings.rrf_k,
            settings.fusion_depth,
        )
        evaluation, partitions = _scored(label, run, dataset, name, split, dev_split, train_split, settings.ks)
        stem = f"{label}.{name}" if on_dev else label
        prefix = f"dev.{metric_label(label)}." if on_dev else f"{metric_label(label)}."
        figures = _figures(evaluation, partitions)
        _record(evaluation, name, out_dir, context.run_id, prefix, stem, figures)
        if on_dev:
            result |= {"dev": figures, "dev_metrics": evaluation.metrics}
        else:
            result |= figures | {"recall_curve": evaluation.recall_curve}
    client = MlflowClient()
    for key, value in {"weight": weight, "method": settings.fusion, "weight_chosen_by": chosen_by}.items():
        client.set_tag(context.run_id, f"{metric_label(label)}.{key}", str(value))
    log_metrics(context.run_id, {"weight": weight}, prefix=f"{metric_label(label)}.")
    return result


def metric_label(label: str) -> str:
    """A system's label as an MLflow key part: ``zero-shot+bm25`` → ``zeroshot_bm25``."""
    return label.replace("-", "").replace("+", "_")


@task(name="plot-recall")
def plot_recall(evaluations: list[dict], context: RunContext, title: str) -> str:
    curves = {item["label"]: item["recall_curve"] for item in evaluations}
    path = plot_recall_curves(curves, context.run_dir / "evaluation" / "recall_at_k.png", title)
    log_artifact(context.run_id, path, "plots")
    return str(path)


__all__ = ["evaluate", "hybrid", "plot_recall", "Evaluation"]
