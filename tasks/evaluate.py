"""Evaluate: exact search over the corpus for every test query; metrics, TREC run file and recall@k plot."""

from __future__ import annotations

import json
from pathlib import Path

from denseflow.model.config import EvalConfig
from denseflow.model.data.beir import RejectLog, load_beir
from denseflow.model.evaluation.metrics import write_trec_run
from denseflow.model.evaluation.plots import plot_recall_curves
from denseflow.model.evaluation.runs import Evaluation, bm25_run, dense_run, score_run
from denseflow.tasks.tracking import log_artifact, log_metrics
from prefect import task

BM25 = "bm25"


@task(name="evaluate")
def evaluate(
    target: str,
    label: str,
    dataset_dir: Path,
    split: str,
    settings: EvalConfig,
    max_seq_length: int | None,
    out_dir: Path,
    cache_dir: Path,
    run_id: str,
    metric_prefix: str = "",
) -> dict:
    """Evaluate ``target`` (a model folder, or ``"bm25"``); returns its metrics and recall curve."""
    dataset = load_beir(Path(dataset_dir), [split], RejectLog())
    if target == BM25:
        run = bm25_run(dataset, split)
    else:
        run = dense_run(target, dataset, split, cache_dir, max_seq_length, settings.batch_size, settings.precision)
    evaluation = score_run(label, run, dataset.qrels[split], settings.ks)
    out_dir = Path(out_dir)
    run_file = write_trec_run(run, out_dir / f"run_{label}.trec", tag=label)
    metrics_file = out_dir / f"metrics_{label}.json"
    metrics_file.write_text(json.dumps({"label": label, "split": split, "metrics": evaluation.metrics}, indent=2))
    per_query_file = out_dir / f"per_query_{label}.json"
    per_query_file.write_text(json.dumps(evaluation.per_query))
    log_metrics(run_id, evaluation.metrics, prefix=metric_prefix)
    for path in (run_file, metrics_file, per_query_file):
        log_artifact(run_id, path, "evaluation")
    return {"label": label, "metrics": evaluation.metrics, "recall_curve": evaluation.recall_curve}


@task(name="plot-recall")
def plot_recall(evaluations: list[dict], out_dir: Path, run_id: str, title: str) -> str:
    curves = {item["label"]: item["recall_curve"] for item in evaluations}
    path = plot_recall_curves(curves, Path(out_dir) / "recall_at_k.png", title)
    log_artifact(run_id, path, "plots")
    return str(path)


__all__ = ["evaluate", "plot_recall", "Evaluation"]
