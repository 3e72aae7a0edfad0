"""The one entry point of ingestion: any configured source in, a BEIR folder with its rejects and report out."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from denseflow.model.config import DataConfig
from denseflow.model.data.assemble import SourceReport, SourceResult, write_source
from denseflow.model.data.beir import bundled_scifact_dir, load_beir
from denseflow.model.data.clicks import load_clicks
from denseflow.model.data.io import DataError, RejectLog
from denseflow.model.data.qa import load_qa

REPORT_FILE = "ingest_report.json"
REJECTS_FILE = "rejects.jsonl"


def load_source(config: DataConfig, rejects: RejectLog) -> SourceResult:
    """Any configured source as one dataset (BEIR folders too, so callers need not branch)."""
    if config.source == "clicks":
        return load_clicks(config, rejects)
    if config.source == "qa":
        return load_qa(config, rejects)
    folder = Path(config.path) if config.path else bundled_scifact_dir()
    splits = beir_splits(folder)
    before = len(rejects)
    dataset = load_beir(folder, splits, rejects)
    report = SourceReport(source="beir", files=[str(folder)], rejected_rows=len(rejects) - before)
    report.reject_reasons = rejects.counts()
    report.queries = len(dataset.queries)
    report.positives = sum(
        1 for split in dataset.qrels.values() for docs in split.values() for r in docs.values() if r > 0
    )
    report.split_queries = {name: len(judged) for name, judged in dataset.qrels.items()}
    return SourceResult(dataset, {}, report)


def beir_splits(folder: Path) -> list[str]:
    """The splits a BEIR folder judges (``qrels/<split>.tsv`` or ``.tsv.gz``)."""
    qrels = Path(folder) / "qrels"
    if not qrels.is_dir():
        raise DataError(f"{qrels}: folder not found")
    names = sorted({p.name.removesuffix(".gz").removesuffix(".tsv") for p in qrels.iterdir() if ".tsv" in p.name})
    if not names:
        raise DataError(f"{qrels}: no <split>.tsv files")
    return names


@dataclass
class IngestResult:
    folder: Path
    fingerprint: str
    report: SourceReport
    rejects_path: Path


def ingest(config: DataConfig, out: Path) -> IngestResult:
    """Load the configured source and write the BEIR folder, ``rejects.jsonl`` and ``ingest_report.json``.

    Rejects are written even when the load fails, so the reasons can be read.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rejects = RejectLog()
    try:
        result = load_source(config, rejects)
    finally:
        rejects.write(out / REJECTS_FILE)
    write_source(result, out)
    digest = result.fingerprint
    payload = {"fingerprint": digest, **asdict(result.report), "usable_share": result.report.usable_share}
    (out / REPORT_FILE).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return IngestResult(out, digest, result.report, out / REJECTS_FILE)
