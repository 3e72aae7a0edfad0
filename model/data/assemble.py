"""One dataset out of any source: query ids and splits, the ingest report, the usable-share check, assembly.

Every source ends as the same :class:`~denseflow.model.data.beir.Dataset` (and so the same BEIR folder): the rest
of the pipeline never knows where its judgments came from.

Queries are normalised (whitespace collapsed; lower-cased for identity) and de-duplicated: a query's id is a hash
of its normalised text, so the same query from two files or two sources is one query. Its split is a hash of the
same text (``data.splits`` shares), so appending data never moves a query to another split. With ``judged_eval``
the evaluation split is instead the corpus folder's judged one, and source queries with the text of an
evaluation query are dropped.

A load fails with :class:`~denseflow.model.data.io.DataError` when fewer than ``min_usable_share`` of the source
rows are usable (:func:`check_usable`); the rejects say why, by reason.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from denseflow.model.config import DataConfig
from denseflow.model.data.beir import (
    Dataset,
    Document,
    find_file,
    fingerprint,
    normalise_text,
    read_corpus,
    read_qrels,
    read_queries,
    write_beir,
)
from denseflow.model.data.io import EVAL_QUERY, DataError, RejectLog

SKIP_ABOVE_FILE = "skip_above.jsonl"


@dataclass
class SourceReport:
    """What an ingest read, kept and dropped: logged as run metrics and written to ``ingest_report.json``."""

    source: str
    files: list[str] = field(default_factory=list)
    rows: int = 0
    usable_rows: int = 0
    rejected_rows: int = 0
    reject_reasons: dict[str, int] = field(default_factory=dict)
    queries: int = 0
    queries_without_positive: int = 0
    positives: int = 0
    split_queries: dict[str, int] = field(default_factory=dict)
    clicks: int = 0
    impressions: int = 0
    distinct_pairs: int = 0
    skip_above_pairs: int = 0
    skip_above_dropped_as_positive: int = 0
    passages_added: int = 0
    passages_deduplicated: int = 0
    duplicate_pairs: int = 0
    eval_queries_dropped: int = 0
    leaked_queries_removed: int = 0
    first_timestamp: str | None = None
    last_timestamp: str | None = None

    @property
    def usable_share(self) -> float:
        return self.usable_rows / self.rows if self.rows else 0.0

    def as_metrics(self) -> dict[str, float]:
        """Numeric fields flattened for MLflow (``split_queries.train``, ``rejects.negative dwell`` ...)."""
        metrics: dict[str, float] = {"usable_share": self.usable_share}
        for key, value in asdict(self).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                metrics[key] = float(value)
        metrics |= {f"split_queries.{name}": float(n) for name, n in self.split_queries.items()}
        metrics |= {f"rejects.{reason.replace(' ', '_')}": float(n) for reason, n in self.reject_reasons.items()}
        return metrics


@dataclass
class SourceResult:
    dataset: Dataset
    skip_above: dict[str, list[str]]
    report: SourceReport

    @property
    def fingerprint(self) -> str:
        return dataset_fingerprint(self.dataset, self.skip_above)


# --------------------------------------------------------------------------------------------- ids and splits


def query_key(text: str) -> str:
    """Identity of a query: lower-cased, whitespace collapsed (``normalise_text``)."""
    return normalise_text(text)


def query_id(key: str) -> str:
    """Stable id of a normalised query: the same text gets the same id in every file, source and run."""
    return "q" + hashlib.sha256(key.encode()).hexdigest()[:16]


def passage_hash(text: str) -> str:
    """Content hash of a passage's normalised text (the title is metadata, not identity)."""
    return hashlib.sha256(normalise_text(text).encode()).hexdigest()


def assign_split(key: str, shares: Mapping[str, float], salt: str) -> str:
    """The split of a query, from a hash of its normalised text: no other query or row can move it.

    The hash maps to a point in [0, 1) and the shares, in their configured order, cut that interval.
    """
    total = sum(shares.values())
    point = int.from_bytes(hashlib.sha256(f"{salt}\0{key}".encode()).digest()[:8], "big") / 2**64
    cumulative = 0.0
    last = None
    for name, share in shares.items():
        if share <= 0:
            continue
        cumulative += share / total
        last = name
        if point < cumulative:
            return name
    assert last is not None, "shares must have one value > 0"
    return last  # floating-point rounding left the point past the last boundary


def dataset_fingerprint(dataset: Dataset, skip_above: Mapping[str, Sequence[str]] | None = None) -> str:
    """``fingerprint(dataset)``, extended by the skip-above negatives when there are any (they train too)."""
    base = fingerprint(dataset)
    if not skip_above:
        return base
    digest = hashlib.sha256(base.encode())
    for qid in sorted(skip_above):
        digest.update(f"n\t{qid}\t{','.join(skip_above[qid])}\n".encode())
    return digest.hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ the corpus


def read_base_corpus(path: Path | None, rejects: RejectLog) -> tuple[dict[str, Document], Path | None]:
    """The corpus a source refers to: a BEIR folder or a ``corpus.jsonl`` file; returns it and its folder."""
    if path is None:
        return {}, None
    path = Path(path)
    if path.is_dir():
        return read_corpus(find_file(path, "corpus.jsonl"), rejects), path
    if path.is_file():
        return read_corpus(path, rejects), None
    raise DataError(f"{path}: corpus not found (expected a BEIR folder or a corpus.jsonl file)")


def check_usable(report: SourceReport, rejects: RejectLog, files: list[Path], floor: float) -> None:
    """Fill the report's row and reject counts; raise :class:`DataError` when too few rows were usable."""
    report.rows = report.usable_rows + report.rejected_rows
    source_files_ = {str(path) for path in files}
    reasons: dict[str, int] = {}
    for row in rejects.rows:
        if row["file"] in source_files_:
            reasons[row["reason"]] = reasons.get(row["reason"], 0) + 1
    report.reject_reasons = reasons
    where = files[0] if len(files) == 1 else files[0].parent
    if report.rows == 0:
        raise DataError(f"{where}: no rows")
    if report.usable_share < floor:
        top = ", ".join(f"{reason}: {n}" for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:5])
        raise DataError(
            f"{where}: only {report.usable_rows} of {report.rows} rows usable ({report.usable_share:.1%}), "
            f"below data.min_usable_share {floor:.0%}; rejects by reason: {top}"
        )


def build_dataset(
    config: DataConfig,
    query_keys: list[str],
    query_text: list[str],
    positives: dict[int, dict[str, int]],
    skip_lists: dict[int, list[str]],
    corpus: dict[str, Document],
    corpus_folder: Path | None,
    report: SourceReport,
    rejects: RejectLog,
    source_file: Path,
) -> tuple[Dataset, dict[str, list[str]]]:
    """Queries by hashed id, judgments by hashed split, plus the judged evaluation split when asked for."""
    eval_queries: dict[str, str] = {}
    eval_qrels: dict[str, dict[str, int]] = {}
    if config.judged_eval:
        if corpus_folder is None:
            raise DataError("data.judged_eval needs data.corpus to be a BEIR folder with judged queries")
        judged_queries = read_queries(find_file(corpus_folder, "queries.jsonl"), rejects)
        eval_file = find_file(corpus_folder / "qrels", f"{config.eval_split}.tsv")
        eval_qrels = read_qrels(eval_file, judged_queries, corpus, rejects)
        eval_queries = {qid: judged_queries[qid] for qid in eval_qrels}
    eval_keys = {query_key(text) for text in eval_queries.values()}

    shares = {name: share for name, share in config.splits.items() if share > 0}
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, dict[str, int]]] = {name: {} for name in shares}
    skip_above: dict[str, list[str]] = {}
    for qidx, judged_docs in positives.items():
        key = query_key(query_text[qidx])
        if key in eval_keys:
            rejects.add(source_file, None, "query", EVAL_QUERY, query_text[qidx])
            report.eval_queries_dropped += 1
            continue
        qid = query_id(key)
        queries[qid] = query_text[qidx]
        qrels[assign_split(key, shares, config.split_salt)][qid] = dict(sorted(judged_docs.items()))
        if skip_lists.get(qidx):
            skip_above[qid] = skip_lists[qidx]
    for qid, text in eval_queries.items():
        if qid in queries:
            raise DataError(f"judged query id {qid!r} collides with a hashed source query id")
        queries[qid] = text
    if config.judged_eval:
        qrels[config.eval_split] = eval_qrels
    qrels = {name: judged for name, judged in qrels.items() if judged}
    for needed in (config.train_split, config.eval_split):
        if needed not in qrels:
            raise DataError(
                f"{source_file}: split {needed!r} has no queries with a positive; "
                f"{len(positives)} queries had positives"
                + (f" (click rule {config.clicks.rule!r})" if config.source == "clicks" else "")
                + ": "
                "add data, loosen the rule or change data.splits"
            )
    report.queries = len(positives) - report.eval_queries_dropped
    report.positives = sum(len(docs) for docs in positives.values())
    report.split_queries = {name: len(judged) for name, judged in qrels.items()}
    report.skip_above_pairs = sum(len(docs) for docs in skip_above.values())
    return Dataset(corpus=corpus, queries=queries, qrels=qrels), skip_above


def write_source(result: SourceResult, folder: Path) -> Path:
    """The dataset in the BEIR layout, plus ``skip_above.jsonl`` when the source produced skip-above negatives."""
    write_beir(result.dataset, folder)
    target = Path(folder) / SKIP_ABOVE_FILE
    if result.skip_above:
        with target.open("w", encoding="utf-8") as out:
            for qid, doc_ids in result.skip_above.items():
                out.write(json.dumps({"query_id": qid, "doc_ids": doc_ids}, ensure_ascii=False) + "\n")
    elif target.exists():
        target.unlink()  # a stale file from an earlier ingest into the same folder would train on old data
    return Path(folder)


def read_skip_above(folder: Path) -> dict[str, list[str]]:
    """``{query_id: [doc_id, ...]}`` from a dataset folder's ``skip_above.jsonl``; empty when it has none."""
    path = Path(folder) / SKIP_ABOVE_FILE
    if not path.is_file():
        return {}
    negatives: dict[str, list[str]] = {}
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                negatives[str(row["query_id"])] = [str(doc_id) for doc_id in row["doc_ids"]]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise DataError(f"{path}:{number}: bad skip-above row ({err})") from err
    return negatives
