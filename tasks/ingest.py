"""Ingest: model/data/ingest.ingest for a run (its splits, the dev carve), then the counts and dataset in MLflow."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from denseflow.model.config import DataConfig
from denseflow.model.data.beir import bundled_scifact_dir
from denseflow.model.data.ingest import REJECTS_FILE, IngestedData
from denseflow.model.data.ingest import ingest as ingest_source
from denseflow.tasks.tracking import log_artifact, log_dataset_inputs, log_metrics, run_logger, set_tags


@task(name="ingest")
def ingest(data: DataConfig, run_dir: Path, run_id: str) -> IngestedData:
    """Write ``run_dir/data`` (BEIR layout) and ``run_dir/rejects.jsonl``; returns paths and counts."""
    result = ingest_source(data, Path(run_dir) / "data", for_run=True, rejects_path=Path(run_dir) / REJECTS_FILE)
    ingested = result.handover(data)
    dev = result.dev
    if dev.method == "none":
        run_logger().warning(
            "no dev split (%s): training runs without checkpoint selection and the fusion weight is not tuned",
            dev.reason,
        )
    elif dev.method == "query hash":
        run_logger().warning("dev split by query hash: %s", dev.reason)
    else:
        run_logger().info("dev split (%s, %d queries): %s", dev.method, dev.queries, dev.reason)
    log_metrics(run_id, ingested.counts(), prefix="ingest.")
    log_artifact(run_id, result.rejects_path)
    if data.source != "beir":
        log_metrics(run_id, result.report.as_metrics(), prefix=f"ingest.{data.source}.")
    # Client calls, not ``with mlflow.start_run(run_id=...)``: leaving that block ends the run as FINISHED, so a
    # retrain killed later would show a finished run with no metrics.
    set_tags(run_id, {"dataset_fingerprint": result.fingerprint, **dev.as_tags()})
    source = str(data.path or bundled_scifact_dir())
    splits = {"training": data.train_split, "evaluation": data.eval_split}
    log_dataset_inputs(run_id, source, result.fingerprint, splits)
    return ingested
