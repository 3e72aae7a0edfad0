"""Ingest: read and validate the configured source, guard the evaluation split, write the BEIR folder."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from denseflow.model.config import DataConfig
from denseflow.model.data import ingest as sources
from denseflow.model.data.assemble import SourceResult
from denseflow.model.data.beir import RejectLog, bundled_scifact_dir
from denseflow.model.data.dev import carve_dev_split
from denseflow.model.data.ingest import IngestedData
from denseflow.tasks.tracking import log_artifact, log_dataset_inputs, log_metrics, run_logger, set_tags


def load_source(data: DataConfig, rejects: RejectLog) -> SourceResult:
    """The configured source, normalised to a Dataset; every bad row lands in ``rejects``."""
    if data.source == "beir":
        folder = Path(data.path or bundled_scifact_dir())
        splits = [data.train_split, data.eval_split]
        if any((folder / "qrels" / f"{data.dev_split}{suffix}").is_file() for suffix in (".tsv", ".tsv.gz")):
            splits.append(data.dev_split)
        # Same limits as every source (data.max_line_bytes, data.min_usable_share) and as `denseflow ingest`.
        return sources.load_beir_source(data, rejects, splits)
    return sources.load_source(data, rejects)  # clicks / qa: see model/data/clicks.py, qa.py


@task(name="ingest")
def ingest(data: DataConfig, run_dir: Path, run_id: str) -> IngestedData:
    """Write ``run_dir/data`` (BEIR layout) and ``run_dir/rejects.jsonl``; returns paths and counts."""
    rejects = RejectLog()
    try:
        loaded = load_source(data, rejects)
    finally:  # a source below its usable-share floor fails here; its rejects say why
        rejects_path = rejects.write(Path(run_dir) / "rejects.jsonl")
    dataset = loaded.dataset
    leaks = sources.remove_leaks(loaded, data, rejects)  # the same removal as `denseflow ingest`
    dev = carve_dev_split(dataset, data.train_split, data.dev_split, data.dev_share, data.min_dev_train_queries)
    dev_queries = dev.queries
    if dev.method == "none":
        run_logger().warning(
            "no dev split (%s): training runs without checkpoint selection and the fusion weight is not tuned",
            dev.reason,
        )
    elif dev.method == "query hash":
        run_logger().warning("dev split by query hash: %s", dev.reason)
    else:
        run_logger().info("dev split (%s, %d queries): %s", dev.method, dev.queries, dev.reason)
    dataset_dir = sources.write_source(loaded, Path(run_dir) / "data")
    rejects_path = rejects.write(Path(run_dir) / "rejects.jsonl")
    digest = loaded.fingerprint
    counts = {
        "documents": len(dataset.corpus),
        "queries": len(dataset.queries),
        "train_queries": len(dataset.qrels[data.train_split]),
        "eval_queries": len(dataset.qrels[data.eval_split]),
        "dev_queries": dev_queries,
        "rejected_rows": len(rejects),
        "leaked_queries_removed": leaks,
    }
    log_metrics(run_id, counts, prefix="ingest.")
    log_artifact(run_id, rejects_path)
    skip_above_queries = None
    if data.source != "beir":
        log_metrics(run_id, loaded.report.as_metrics(), prefix=f"ingest.{data.source}.")
        skip_above_queries = len(loaded.skip_above)
    source = str(data.path or bundled_scifact_dir())
    # Client calls, not ``with mlflow.start_run(run_id=...)``: leaving that block ends the run as FINISHED, so a
    # retrain killed later would show a finished run with no metrics.
    set_tags(run_id, {"dataset_fingerprint": digest, **dev.as_tags()})
    log_dataset_inputs(run_id, source, digest, {"training": data.train_split, "evaluation": data.eval_split})
    return IngestedData(
        dataset_dir=str(dataset_dir),
        fingerprint=digest,
        dev_split=data.dev_split if dev_queries else None,
        dev_method=dev.method,
        rejects_path=str(rejects_path),
        reject_reasons=rejects.counts(),
        skip_above_queries=skip_above_queries,
        **counts,
    )
