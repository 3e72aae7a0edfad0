"""The one entry point of ingestion: any configured source in, a BEIR folder with its rejects and report out."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from denseflow.model.config import DataConfig
from denseflow.model.data.assemble import SourceReport, SourceResult, check_usable, write_source
from denseflow.model.data.beir import beir_files, bundled_scifact_dir, load_beir, remove_evaluation_leaks
from denseflow.model.data.clicks import load_clicks
from denseflow.model.data.dev import DevSplit, carve_dev_split
from denseflow.model.data.io import DataError, RejectLog
from denseflow.model.data.qa import load_qa

REPORT_FILE = "ingest_report.json"
REJECTS_FILE = "rejects.jsonl"


def load_source(config: DataConfig, rejects: RejectLog, splits: list[str] | None = None) -> SourceResult:
    """Any configured source as one dataset (BEIR folders too, so callers need not branch).

    ``splits`` limits a BEIR folder to those splits (default: every split it judges); click logs and QA pairs make
    their own splits from ``data.splits``.
    """
    if config.source == "clicks":
        return load_clicks(config, rejects)
    if config.source == "qa":
        return load_qa(config, rejects)
    return load_beir_source(config, rejects, splits)


def load_run_source(config: DataConfig, rejects: RejectLog) -> SourceResult:
    """The source as a run (retrain, the negatives study) reads it: a BEIR folder for its ``run_splits`` only."""
    return load_source(config, rejects, run_splits(config) if config.source == "beir" else None)


def run_splits(config: DataConfig) -> list[str]:
    """The BEIR splits a run reads: train, eval, and the dev split when the folder ships one."""
    folder = Path(config.path) if config.path else bundled_scifact_dir()
    splits = [config.train_split, config.eval_split]
    if any((folder / "qrels" / f"{config.dev_split}{suffix}").is_file() for suffix in (".tsv", ".tsv.gz")):
        splits.append(config.dev_split)
    return splits


def load_beir_source(config: DataConfig, rejects: RejectLog, splits: list[str] | None = None) -> SourceResult:
    """A BEIR folder held to the same rules as every source: ``data.max_line_bytes`` and ``data.min_usable_share``.

    ``splits`` defaults to every split the folder judges. The report counts rows: a usable row is a document, a
    query or a judgment kept; a rejected row is one rejected from these files (a qrels header is neither).
    """
    folder = Path(config.path) if config.path else bundled_scifact_dir()
    splits = splits or beir_splits(folder)
    files = beir_files(folder, splits) if folder.is_dir() else [folder]
    dataset = load_beir(folder, splits, rejects, max_line_bytes=config.max_line_bytes)
    report = SourceReport(source="beir", files=[str(path) for path in files])
    report.usable_rows = len(dataset.corpus) + len(dataset.queries)
    report.usable_rows += sum(len(docs) for judged in dataset.qrels.values() for docs in judged.values())
    names = {str(path) for path in files}
    report.rejected_rows = sum(1 for row in rejects.rows if row["file"] in names)
    check_usable(report, rejects, files, config.min_usable_share)
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


def remove_leaks(result: SourceResult, config: DataConfig, rejects: RejectLog) -> int:
    """The evaluation-leak removal ``retrain`` applies: training queries also evaluated (by id or text) are dropped.

    A dataset without the training split (an evaluation-only BEIR folder) has nothing to leak.
    """
    dataset = result.dataset
    if config.train_split not in dataset.qrels:
        return 0
    removed = remove_evaluation_leaks(dataset, config.train_split, [config.eval_split, config.dev_split], rejects)
    result.report.leaked_queries_removed = removed
    result.report.split_queries = {name: len(judged) for name, judged in dataset.qrels.items()}
    result.skip_above = {qid: docs for qid, docs in result.skip_above.items() if qid in dataset.queries}
    return removed


@dataclass(frozen=True)
class IngestedData:
    """What the ingest stage of a run hands on: the BEIR folder written, its fingerprint, the dev split (None when
    none could be carved) and how it was made, the rejects file, and the counts logged to MLflow."""

    dataset_dir: str
    fingerprint: str
    dev_split: str | None
    dev_method: str
    dev_queries: int
    rejects_path: str
    reject_reasons: dict[str, int]
    documents: int
    queries: int
    train_queries: int
    eval_queries: int
    rejected_rows: int
    leaked_queries_removed: int
    skip_above_queries: int | None = None  # click logs only

    def selection_split(self, min_dev_queries: int) -> str | None:
        """The split choices are made on: dev, unless it has fewer than ``min_dev_queries`` queries (choosing on a
        few queries would choose by noise, so documented priors are used instead) or there is none."""
        return self.dev_split if self.dev_split and self.dev_queries >= min_dev_queries else None

    def counts(self) -> dict[str, int]:
        """The counts a run logs as ``ingest.*`` metrics."""
        names = ("documents", "queries", "train_queries", "eval_queries", "dev_queries", "rejected_rows")
        return {name: getattr(self, name) for name in names} | {"leaked_queries_removed": self.leaked_queries_removed}


@dataclass
class IngestResult:
    """One ingest: the folder written, the dataset's fingerprint, the source report, the rejects, and for a run the
    dev split carved (``None`` for ``denseflow ingest``, which keeps the splits as they are)."""

    folder: Path
    fingerprint: str
    rejects_path: Path
    source: SourceResult
    rejects: RejectLog
    leaked_queries_removed: int
    dev: DevSplit | None = None

    @property
    def report(self) -> SourceReport:
        return self.source.report

    def handover(self, config: DataConfig) -> IngestedData:
        """What the run's later stages read: paths, the dev split to select on, and the counts."""
        dataset = self.source.dataset
        dev_queries = self.dev.queries if self.dev else 0
        return IngestedData(
            dataset_dir=str(self.folder),
            fingerprint=self.fingerprint,
            dev_split=config.dev_split if dev_queries else None,
            dev_method=self.dev.method if self.dev else "none",
            dev_queries=dev_queries,
            rejects_path=str(self.rejects_path),
            reject_reasons=self.rejects.counts(),
            documents=len(dataset.corpus),
            queries=len(dataset.queries),
            train_queries=len(dataset.qrels[config.train_split]),
            eval_queries=len(dataset.qrels[config.eval_split]),
            rejected_rows=len(self.rejects),
            leaked_queries_removed=self.leaked_queries_removed,
            skip_above_queries=None if config.source == "beir" else len(self.source.skip_above),
        )


def ingest(config: DataConfig, out: Path, *, for_run: bool = False, rejects_path: Path | None = None) -> IngestResult:
    """Load the configured source and write the BEIR folder, the rejects file and ``ingest_report.json`` into ``out``.

    The one ingest path, for ``denseflow ingest`` and for a run (retrain, the negatives study). ``for_run`` reads a
    BEIR folder's run splits only (``run_splits``) and carves the dev split out of train (``carve_dev_split``); the
    fingerprint is taken after that carve, so it names exactly the data the run trains and selects on.
    ``rejects_path`` defaults to ``out/rejects.jsonl``; rejects are written even when the load fails, so the reasons
    can be read.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rejects_path = Path(rejects_path) if rejects_path else out / REJECTS_FILE
    rejects = RejectLog()
    try:
        result = load_run_source(config, rejects) if for_run else load_source(config, rejects)
        leaks = remove_leaks(result, config, rejects)
    finally:  # a source below its usable-share floor fails here; its rejects say why
        rejects.write(rejects_path)
    dev = None
    if for_run:
        dev = carve_dev_split(
            result.dataset, config.train_split, config.dev_split, config.dev_share, config.min_dev_train_queries
        )
    write_source(result, out)
    digest = result.fingerprint
    payload = {"fingerprint": digest, **asdict(result.report), "usable_share": result.report.usable_share}
    (out / REPORT_FILE).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return IngestResult(out, digest, rejects_path, result, rejects, leaks, dev)
