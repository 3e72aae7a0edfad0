"""Training data from click logs and QA pairs, normalised to one BEIR dataset.

Every source ends as the same :class:`~denseflow.model.data.beir.Dataset` (and so the same BEIR folder): the rest of the
pipeline never knows where its judgments came from.

**Click logs** (JSONL or CSV/TSV, plain or ``.gz``; a file or a folder of files), one row per document shown:

=================  ========  ===========================================================================
field              required  meaning
=================  ========  ===========================================================================
``query``          yes       the query text as typed
``doc_id``         yes       id of the document shown, in the corpus (``data.corpus``)
``position``       yes       1-based rank it was shown at
``clicked``        yes       true/false, 1/0, yes/no
``dwell``          no        seconds spent on the document after the click (>= 0)
``timestamp``      no        when the result page was shown: ISO 8601 (UTC when no zone) or epoch seconds
``session_id``     no        the user's session
``impression_id``  no        one result page; else (session_id, timestamp, query) identifies it
=================  ========  ===========================================================================

Other columns are ignored; ``data.fields`` renames columns (``{"query": "q"}``). A (query, document) pair is a
positive by the *dwell* rule (at least ``min_satisfied_clicks`` clicks with dwell >= ``dwell_threshold``) or the
*CTR* rule (clicks / impressions >= ``ctr_threshold`` over at least ``min_impressions`` impressions). Users look
at the top of a page more than at its bottom, so raw CTR under-rates documents shown low; with ``propensity``
each click counts ``1 / P(examined | position)`` (inverse propensity scoring, Joachims et al. 2017), which
makes the CTR an unbiased estimate of the click rate the document would get if always examined.

*Skip-above* negatives: in one result page, a document shown above a clicked one and not clicked was most
likely examined and judged worse. Per query they are counted, the ones that are also positives of the
query are dropped, and the most skipped are written to ``skip_above.jsonl`` next to the BEIR files; mining
puts them first in ``train_examples.jsonl`` with source ``skip_above``.

**QA pairs** (JSONL or CSV/TSV): ``question``, ``answer`` (the passage), optional ``id`` (passage id) and
``title``. Passages join the corpus (``data.corpus`` when set) de-duplicated by a hash of their normalised
text, so one passage never sits under two ids, whichever source brought it first.

**One dataset out.** Queries are normalised (whitespace collapsed; lower-cased for identity) and de-duplicated:
a query's id is a hash of its normalised text, so the same query from two files or two sources is one query.
Its split is a hash of the same text (``data.splits`` shares), so appending data never moves a query to
another split. With ``judged_eval`` the evaluation split is instead the corpus folder's judged one, and
source queries with the text of an evaluation query are dropped.

**Validation.** Every unusable row goes to the :class:`~denseflow.model.data.beir.RejectLog` with file, line, field and one
reason from :data:`REASONS` (constant strings, so counts group); the load fails with :class:`DataError` when
fewer than ``min_usable_share`` of the source rows are usable. Streaming keeps memory bounded by the number
of distinct (query, document) pairs and open result pages, not by the number of rows.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from denseflow.model.config import ClickConfig, DataConfig
from denseflow.model.data.beir import (
    DataError,
    Dataset,
    Document,
    RejectLog,
    bundled_scifact_dir,
    find_file,
    fingerprint,
    load_beir,
    normalise_text,
    read_corpus,
    read_qrels,
    read_queries,
    write_beir,
)

SKIP_ABOVE_FILE = "skip_above.jsonl"
REPORT_FILE = "ingest_report.json"
REJECTS_FILE = "rejects.jsonl"

# Reject reasons, constant so that RejectLog.counts() groups them; details go in the row's ``raw``.
NOT_UTF8 = "not valid UTF-8"
LINE_TOO_LONG = "line over the size limit"
MALFORMED = "malformed row"
MISSING_FIELD = "missing field"
UNKNOWN_DOC = "unknown document id"
BAD_POSITION = "position is not a positive integer"
BAD_CLICKED = "clicked is not a boolean"
BAD_DWELL = "dwell is not a number"
NEGATIVE_DWELL = "negative dwell"
BAD_TIMESTAMP = "timestamp does not parse"
DUPLICATE_IMPRESSION_ROW = "document twice in one result page"
ID_CONFLICT = "document id already used by a different passage"
EVAL_QUERY = "query is an evaluation query"
REASONS = (
    NOT_UTF8,
    LINE_TOO_LONG,
    MALFORMED,
    MISSING_FIELD,
    UNKNOWN_DOC,
    BAD_POSITION,
    BAD_CLICKED,
    BAD_DWELL,
    NEGATIVE_DWELL,
    BAD_TIMESTAMP,
    DUPLICATE_IMPRESSION_ROW,
    ID_CONFLICT,
    EVAL_QUERY,
)

CLICK_FIELDS = ("query", "doc_id", "position", "clicked", "dwell", "timestamp", "session_id", "impression_id")
QA_FIELDS = ("question", "answer", "id", "title")
_TRUE = frozenset({"1", "true", "t", "yes", "y"})
_FALSE = frozenset({"0", "false", "f", "no", "n"})
# Not ".json": the simulator's "<log>.meta.json" sits next to its log, and a folder of logs must skip it.
_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv"}


class _RowError(Exception):
    def __init__(self, field_name: str | None, reason: str) -> None:
        super().__init__(reason)
        self.field_name = field_name
        self.reason = reason


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


# ---------------------------------------------------------------------------------------------- reading rows


def source_files(path: Path) -> list[Path]:
    """``path`` itself, or the JSONL/CSV/TSV files (plain or gzipped) of a folder, sorted by name."""
    path = Path(path)
    if path.is_file():
        _file_format(path)
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and _format_or_none(p))
        if not files:
            raise DataError(f"{path}: no .jsonl/.csv/.tsv files (plain or .gz) in this folder")
        return files
    raise DataError(f"{path}: file or folder not found")


def _format_or_none(path: Path) -> str | None:
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    return _SUFFIXES.get(Path(name).suffix.lower())


def _file_format(path: Path) -> str:
    fmt = _format_or_none(path)
    if fmt is None:
        raise DataError(f"{path}: unknown format; expected .jsonl, .csv or .tsv, plain or .gz")
    return fmt


def _open_stream(path: Path) -> BinaryIO:
    """Plain or gzipped bytes with a 1 MiB buffer: gzip's default 8 KiB one costs ~1 s per million rows."""
    if path.suffix == ".gz":
        return io.BufferedReader(gzip.GzipFile(path, "rb"), buffer_size=1 << 20)  # type: ignore[arg-type]
    return path.open("rb", buffering=1 << 20)


def iter_text_lines(path: Path, rejects: RejectLog, max_line_bytes: int) -> Iterator[tuple[int, str]]:
    """``(line_number, text)`` of each non-blank line; over-long and non-UTF-8 lines are rejected.

    An over-long line is skipped in bounded reads, never held whole, so one runaway line cannot exhaust memory.
    """
    limit = max_line_bytes + 2  # room for "\r\n"
    with _open_stream(path) as stream:
        number = 0
        while True:
            raw = stream.readline(limit)
            if not raw:
                return
            number += 1
            if len(raw) == limit and not raw.endswith(b"\n"):
                head = raw[:200]
                while (rest := stream.readline(limit)) and not rest.endswith(b"\n"):
                    pass
                rejects.add(path, number, None, LINE_TOO_LONG, head.decode("utf-8", "replace"))
                continue
            body = raw.rstrip(b"\r\n")
            if len(body) > max_line_bytes:
                rejects.add(path, number, None, LINE_TOO_LONG, body[:200].decode("utf-8", "replace"))
                continue
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError as err:
                rejects.add(path, number, None, NOT_UTF8, f"byte {err.start}: " + body.decode("utf-8", "replace"))
                continue
            if text.strip():
                yield number, text


def iter_records(path: Path, rejects: RejectLog, max_line_bytes: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line_number, row)`` of each parseable row of a JSONL, CSV or TSV file (CSV/TSV need a header)."""
    fmt = _file_format(path)
    if fmt == "jsonl":
        for number, text in iter_text_lines(path, rejects, max_line_bytes):
            try:
                row = json.loads(text)
            except json.JSONDecodeError as err:
                rejects.add(path, number, None, MALFORMED, f"JSON: {err.msg}: {text}")
                continue
            if not isinstance(row, dict):
                rejects.add(path, number, None, MALFORMED, f"not a JSON object: {text}")
                continue
            yield number, row
    else:
        yield from _iter_delimited(path, rejects, max_line_bytes, "," if fmt == "csv" else "\t")


def _iter_delimited(
    path: Path, rejects: RejectLog, max_line_bytes: int, delimiter: str
) -> Iterator[tuple[int, dict[str, Any]]]:
    current = [0]

    def texts() -> Iterator[str]:
        for number, text in iter_text_lines(path, rejects, max_line_bytes):
            current[0] = number
            yield text

    reader = csv.reader(texts(), delimiter=delimiter)
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        return
    except csv.Error as err:
        raise DataError(f"{path}:{current[0]}: unreadable header: {err}") from err
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            rejects.add(path, current[0], None, MALFORMED, f"CSV: {err}")
            continue
        if len(cells) != len(header):
            rejects.add(path, current[0], None, MALFORMED, f"expected {len(header)} columns, found {len(cells)}")
            continue
        yield current[0], {name: (cell if cell != "" else None) for name, cell in zip(header, cells, strict=True)}


def _field_names(config: DataConfig, names: Sequence[str]) -> dict[str, str]:
    unknown = set(config.fields) - set(names)
    if unknown:
        raise DataError(f"data.fields: unknown field(s) {sorted(unknown)}; known: {list(names)}")
    return {name: config.fields.get(name, name) for name in names}


def _required_str(row: dict[str, Any], column: str, name: str) -> str:
    value = row.get(column)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # numeric ids are common in logs
    if not isinstance(value, str) or not value.strip():
        raise _RowError(name, MISSING_FIELD)
    return value.strip()


def _optional_str(row: dict[str, Any], column: str) -> str | None:
    value = row.get(column)
    if value is None or value == "":
        return None
    return str(value)


def _parse_position(value: Any) -> int:
    if isinstance(value, bool):
        raise _RowError("position", BAD_POSITION)
    if isinstance(value, int):
        position = value
    elif isinstance(value, float) and value.is_integer():
        position = int(value)
    elif isinstance(value, str) and value.strip().isdigit():
        position = int(value)
    else:
        raise _RowError("position", BAD_POSITION)
    if position < 1:
        raise _RowError("position", BAD_POSITION)
    return position


def _parse_clicked(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
    raise _RowError("clicked", BAD_CLICKED)


def _parse_dwell(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise _RowError("dwell", BAD_DWELL)
    try:
        dwell = float(value)
    except (TypeError, ValueError):
        raise _RowError("dwell", BAD_DWELL) from None
    if not math.isfinite(dwell):
        raise _RowError("dwell", BAD_DWELL)
    if dwell < 0:
        raise _RowError("dwell", NEGATIVE_DWELL)
    return dwell


def parse_timestamp(value: Any) -> float | None:
    """Epoch seconds from ISO 8601 (no zone = UTC) or a number of epoch seconds; None when absent."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise _RowError("timestamp", BAD_TIMESTAMP)
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = float(value)
        except ValueError:
            try:
                moment = datetime.fromisoformat(value.strip())
            except ValueError:
                raise _RowError("timestamp", BAD_TIMESTAMP) from None
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            seconds = moment.timestamp()
    else:
        raise _RowError("timestamp", BAD_TIMESTAMP)
    if not math.isfinite(seconds):
        raise _RowError("timestamp", BAD_TIMESTAMP)
    return seconds


def _iso(seconds: float | None) -> str | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC).isoformat()


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


# ---------------------------------------------------------------------------------------------------- clicks


class Propensity:
    """``1 / P(examined | position)``, clipped at ``1 / propensity_floor``; 1 everywhere when disabled."""

    def __init__(self, config: ClickConfig) -> None:
        self.config = config
        self._cache: dict[int, float] = {}

    def examination(self, position: int) -> float:
        config = self.config
        if config.propensity == "none":
            return 1.0
        if config.propensity == "table":
            table = config.propensity_table or [1.0]
            probability = table[min(position, len(table)) - 1]
        else:
            probability = (1.0 / position) ** config.propensity_power
        return max(probability, config.propensity_floor)

    def weight(self, position: int) -> float:
        weight = self._cache.get(position)
        if weight is None:
            weight = self._cache[position] = 1.0 / self.examination(position)
        return weight


class ClickAggregator:
    """Streams click rows into per-(query, document) counts and per-page skip-above counts.

    Memory holds one entry per distinct query, per distinct (query, document) pair and per open result page
    (at most ``impression_buffer``; the oldest is closed first), never the rows themselves. A page whose rows
    are more than ``impression_buffer`` pages apart in the log is split in two, and skip-above is derived
    within each part (logs write a page's rows together, so this is rare and only loses negatives).
    """

    def __init__(self, config: ClickConfig, corpus: Mapping[str, Document]) -> None:
        self.config = config
        self.corpus = corpus
        self.propensity = Propensity(config)
        self.query_keys: list[str] = []
        self.query_text: list[str] = []
        self._query_index: dict[str, int] = {}
        self._raw_query_index: dict[str, int] = {}
        # [impressions, clicks, satisfied clicks, inverse-propensity-weighted clicks]
        self.pairs: dict[tuple[int, str], list[float]] = {}
        self.skips: dict[tuple[int, str], int] = {}
        self.pages: dict[tuple, dict[str, tuple[int, bool]]] = {}
        self._last_raw_timestamp: Any = None
        self._last_timestamp: float | None = None
        self.impressions = 0
        self.clicks = 0
        self.first_timestamp: float | None = None
        self.last_timestamp: float | None = None

    def _query(self, raw: str) -> int:
        index = self._raw_query_index.get(raw)
        if index is None:
            key = query_key(raw)
            index = self._query_index.get(key)
            if index is None:
                index = self._query_index[key] = len(self.query_keys)
                self.query_keys.append(key)
                self.query_text.append(" ".join(raw.split()))
            if len(self._raw_query_index) < 1_000_000:  # a cache: cap it so odd logs cannot grow it forever
                self._raw_query_index[raw] = index
        return index

    def add(self, row: dict[str, Any], names: Mapping[str, str]) -> None:
        """Validate one row and count it; raises ``_RowError`` (nothing counted) when it is unusable.

        The common cases (str, int, bool values) are tested inline first: this runs once per row of logs
        with millions of rows, and the general parsers are several times slower.
        """
        query = row.get(names["query"])
        if type(query) is not str or not query or query[0].isspace() or query[-1].isspace():
            query = _required_str(row, names["query"], "query")
        doc_id = row.get(names["doc_id"])
        if type(doc_id) is not str or not doc_id:
            doc_id = _required_str(row, names["doc_id"], "doc_id")
        position = row.get(names["position"])
        if type(position) is not int or position < 1:
            if position is None:
                raise _RowError("position", MISSING_FIELD)
            position = _parse_position(position)
        clicked = row.get(names["clicked"])
        if type(clicked) is not bool:
            if clicked is None:
                raise _RowError("clicked", MISSING_FIELD)
            clicked = _parse_clicked(clicked)
        dwell = row.get(names["dwell"])
        if dwell is not None and (type(dwell) is not float or not 0.0 <= dwell < math.inf):
            dwell = _parse_dwell(dwell)
        raw_timestamp = row.get(names["timestamp"])
        if raw_timestamp is None:
            timestamp = None
        elif type(raw_timestamp) is str and raw_timestamp == self._last_raw_timestamp:  # a page's rows share it
            timestamp = self._last_timestamp
        else:
            timestamp = parse_timestamp(raw_timestamp)
            self._last_raw_timestamp, self._last_timestamp = raw_timestamp, timestamp
        session = row.get(names["session_id"])
        impression = row.get(names["impression_id"])
        if doc_id not in self.corpus:
            doc_id = _required_str(row, names["doc_id"], "doc_id")
            if doc_id not in self.corpus:
                raise _RowError("doc_id", UNKNOWN_DOC)
        qidx = self._query(query)

        # The query is part of every page key, so a page always knows its query when it closes.
        page_key: tuple | None = None
        if impression is not None and impression != "":
            page_key = (str(impression), qidx)
        elif session is not None and session != "" and timestamp is not None:
            page_key = (str(session), timestamp, qidx)
        if page_key is not None:
            page = self.pages.get(page_key)
            if page is None:
                page = self.pages[page_key] = {}
                self.impressions += 1
                if len(self.pages) > self.config.impression_buffer:
                    self._close(next(iter(self.pages)))
            elif doc_id in page:
                raise _RowError("doc_id", DUPLICATE_IMPRESSION_ROW)
            page[doc_id] = (position, clicked)

        stats = self.pairs.get((qidx, doc_id))
        if stats is None:
            stats = self.pairs[(qidx, doc_id)] = [0, 0, 0, 0.0]
        stats[0] += 1
        if clicked:
            self.clicks += 1
            stats[1] += 1
            if dwell is not None and dwell >= self.config.dwell_threshold:
                stats[2] += 1
            stats[3] += self.propensity.weight(position)
        if timestamp is not None:
            if self.first_timestamp is None or timestamp < self.first_timestamp:
                self.first_timestamp = timestamp
            if self.last_timestamp is None or timestamp > self.last_timestamp:
                self.last_timestamp = timestamp

    def _close(self, page_key: tuple) -> None:
        page = self.pages.pop(page_key)
        if not self.config.skip_above:
            return
        lowest_click = max((position for position, clicked in page.values() if clicked), default=0)
        qidx = page_key[-1]
        for doc_id, (position, clicked) in page.items():
            if not clicked and position < lowest_click:
                self.skips[(qidx, doc_id)] = self.skips.get((qidx, doc_id), 0) + 1

    def close_all(self) -> None:
        for page_key in list(self.pages):
            self._close(page_key)

    def is_positive(self, stats: list[float]) -> bool:
        config = self.config
        if config.rule == "dwell":
            return stats[2] >= config.min_satisfied_clicks
        impressions = stats[0]
        if impressions < config.min_impressions:
            return False
        return stats[3] / impressions >= config.ctr_threshold


def load_clicks(config: DataConfig, rejects: RejectLog) -> SourceResult:
    """Stream the click log(s) at ``config.path`` into a dataset over the corpus at ``config.corpus``."""
    if config.path is None:
        raise DataError("data.path: a click-log file or folder is required for source 'clicks'")
    corpus, corpus_folder = read_base_corpus(config.corpus or bundled_scifact_dir(), rejects)
    names = _field_names(config, CLICK_FIELDS)
    aggregator = ClickAggregator(config.clicks, corpus)
    report = SourceReport(source="clicks")
    files = source_files(config.path)
    for path in files:
        report.files.append(str(path))
        before = len(rejects)
        for number, row in iter_records(path, rejects, config.max_line_bytes):
            try:
                aggregator.add(row, names)
            except _RowError as err:
                rejects.add(path, number, err.field_name, err.reason, row)
                continue
            report.usable_rows += 1
        report.rejected_rows += len(rejects) - before
    aggregator.close_all()
    _check_usable(report, rejects, files, config.min_usable_share)

    report.clicks, report.impressions = aggregator.clicks, aggregator.impressions
    report.distinct_pairs = len(aggregator.pairs)
    report.first_timestamp, report.last_timestamp = _iso(aggregator.first_timestamp), _iso(aggregator.last_timestamp)
    positives: dict[int, dict[str, int]] = {}
    for (qidx, doc_id), stats in aggregator.pairs.items():
        if aggregator.is_positive(stats):
            positives.setdefault(qidx, {})[doc_id] = 1
    report.queries_without_positive = len(aggregator.query_keys) - len(positives)

    skipped: dict[int, list[tuple[int, str]]] = {}
    for (qidx, doc_id), count in aggregator.skips.items():
        if count < config.clicks.min_skips or qidx not in positives:
            continue
        if doc_id in positives[qidx]:
            report.skip_above_dropped_as_positive += 1
            continue
        skipped.setdefault(qidx, []).append((-count, doc_id))
    skip_lists = {
        qidx: [doc_id for _, doc_id in sorted(pairs)[: config.clicks.max_skip_above_per_query]]
        for qidx, pairs in skipped.items()
    }
    dataset, skip_above = _assemble(
        config, aggregator.query_keys, aggregator.query_text, positives, skip_lists, corpus, corpus_folder, report,
        rejects, files[0],
    )  # fmt: skip
    return SourceResult(dataset, skip_above, report)


def load_qa(config: DataConfig, rejects: RejectLog) -> SourceResult:
    """Question/answer pairs at ``config.path``; passages join ``config.corpus`` de-duplicated by content."""
    if config.path is None:
        raise DataError("data.path: a QA file or folder is required for source 'qa'")
    corpus, corpus_folder = read_base_corpus(config.corpus, rejects)
    by_hash: dict[str, str] = {}
    for doc_id, doc in corpus.items():
        if doc.text.strip():
            by_hash.setdefault(passage_hash(doc.text), doc_id)
    names = _field_names(config, QA_FIELDS)
    report = SourceReport(source="qa")
    query_keys: list[str] = []
    query_text: list[str] = []
    query_index: dict[str, int] = {}
    positives: dict[int, dict[str, int]] = {}
    files = source_files(config.path)
    for path in files:
        report.files.append(str(path))
        before = len(rejects)
        for number, row in iter_records(path, rejects, config.max_line_bytes):
            try:
                question = _required_str(row, names["question"], "question")
                answer = _required_str(row, names["answer"], "answer")
                key = query_key(question)
                doc_id = _place_passage(row, names, answer, corpus, by_hash, report)
            except _RowError as err:
                rejects.add(path, number, err.field_name, err.reason, row)
                continue
            qidx = query_index.get(key)
            if qidx is None:
                qidx = query_index[key] = len(query_keys)
                query_keys.append(key)
                query_text.append(" ".join(question.split()))
            judged = positives.setdefault(qidx, {})
            if doc_id in judged:
                report.duplicate_pairs += 1
            judged[doc_id] = 1
            report.usable_rows += 1
        report.rejected_rows += len(rejects) - before
    _check_usable(report, rejects, files, config.min_usable_share)
    dataset, _ = _assemble(
        config, query_keys, query_text, positives, {}, corpus, corpus_folder, report, rejects, files[0]
    )
    return SourceResult(dataset, {}, report)


def _place_passage(
    row: dict[str, Any],
    names: Mapping[str, str],
    answer: str,
    corpus: dict[str, Document],
    by_hash: dict[str, str],
    report: SourceReport,
) -> str:
    """The corpus id of this row's passage: an existing one with the same content, or a new entry."""
    text = " ".join(answer.split())
    title = " ".join((_optional_str(row, names["title"]) or "").split())
    given_id = _optional_str(row, names["id"])
    given_id = given_id.strip() if given_id else None
    content = passage_hash(text)
    if given_id and given_id in corpus:
        if passage_hash(corpus[given_id].text) != content:
            raise _RowError("id", ID_CONFLICT)
        return given_id
    existing = by_hash.get(content)
    if existing is not None:
        report.passages_deduplicated += 1
        return existing
    doc_id = given_id or "p" + content[:16]
    corpus[doc_id] = Document(title=title, text=text)
    by_hash[content] = doc_id
    report.passages_added += 1
    return doc_id


def _check_usable(report: SourceReport, rejects: RejectLog, files: list[Path], floor: float) -> None:
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


def _assemble(
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


# ------------------------------------------------------------------------------------------ one entry point


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
