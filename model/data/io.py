"""Reading rows: source files, their formats, one line reader, record readers, field parsers, the reject log.

Every reader here follows one convention. A row that cannot be used goes to the :class:`RejectLog` with
its file, line, field and one reason from :data:`REASONS`; reasons are constant strings, so
``RejectLog.counts()`` groups them, and the details (the byte offset, the JSON error, the row itself) go
in the entry's ``raw``. A missing file or a load that leaves nothing usable is a :class:`DataError`.

BEIR folders (:mod:`denseflow.model.data.beir`), click logs and QA pairs all read their lines through
:func:`iter_lines`, so a bad byte rejects one row the same way whatever the source.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

MAX_REJECT_RAW_CHARS = 500
UTF8_BOM = b"\xef\xbb\xbf"

# Reject reasons, constant so that RejectLog.counts() groups them; details go in the row's ``raw``.
NOT_UTF8 = "not valid UTF-8"
LINE_TOO_LONG = "line over the size limit"
MALFORMED = "malformed row"
MISSING_FIELD = "missing field"
EMPTY_TEXT = "empty text"
DUPLICATE_ID = "duplicate id"
UNKNOWN_QUERY = "unknown query id"
UNKNOWN_DOC = "unknown document id"
BAD_SCORE = "score is not an integer"
DUPLICATE_JUDGMENT = "duplicate judgment"
EVAL_LEAK = "query also in an evaluation split"
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
    EMPTY_TEXT,
    DUPLICATE_ID,
    UNKNOWN_QUERY,
    UNKNOWN_DOC,
    BAD_SCORE,
    DUPLICATE_JUDGMENT,
    EVAL_LEAK,
    BAD_POSITION,
    BAD_CLICKED,
    BAD_DWELL,
    NEGATIVE_DWELL,
    BAD_TIMESTAMP,
    DUPLICATE_IMPRESSION_ROW,
    ID_CONFLICT,
    EVAL_QUERY,
)

_TRUE = frozenset({"1", "true", "t", "yes", "y"})
_FALSE = frozenset({"0", "false", "f", "no", "n"})
# Not ".json": the simulator's "<log>.meta.json" sits next to its log, and a folder of logs must skip it.
_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv"}


class DataError(ValueError):
    """A dataset cannot be used: the message names the path and what is wrong."""


class RowError(Exception):
    """One row is unusable: raised by the field parsers, turned into a reject by the source's loop."""

    def __init__(self, field_name: str | None, reason: str) -> None:
        super().__init__(reason)
        self.field_name = field_name
        self.reason = reason


@dataclass
class RejectLog:
    """Rows that could not be used, each with where it was and why; written as ``rejects.jsonl``."""

    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, file: str | Path, line: int | None, field_name: str | None, reason: str, raw: Any = None) -> None:
        entry: dict[str, Any] = {"file": str(file), "line": line, "field": field_name, "reason": reason}
        if raw is not None:
            text = raw if isinstance(raw, str) else json.dumps(raw, ensure_ascii=False)
            entry["raw"] = text[:MAX_REJECT_RAW_CHARS]
        self.rows.append(entry)

    def counts(self) -> dict[str, int]:
        """Number of rejected rows per reason."""
        return dict(Counter(row["reason"] for row in self.rows))

    def __len__(self) -> int:
        return len(self.rows)

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as out:
            for row in self.rows:
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
        return path


# ------------------------------------------------------------------------------------------------ files


def source_files(path: Path) -> list[Path]:
    """``path`` itself, or the JSONL/CSV/TSV files (plain or gzipped) of a folder, sorted by name."""
    path = Path(path)
    if path.is_file():
        file_format(path)
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


def file_format(path: Path) -> str:
    """``jsonl``, ``csv`` or ``tsv`` from the file name (a ``.gz`` suffix is looked through)."""
    fmt = _format_or_none(path)
    if fmt is None:
        raise DataError(f"{path}: unknown format; expected .jsonl, .csv or .tsv, plain or .gz")
    return fmt


def open_stream(path: Path) -> BinaryIO:
    """Plain or gzipped bytes with a 1 MiB buffer: gzip's default 8 KiB one costs ~1 s per million rows."""
    path = Path(path)
    if path.suffix == ".gz":
        return io.BufferedReader(gzip.GzipFile(path, "rb"), buffer_size=1 << 20)  # type: ignore[arg-type]
    return path.open("rb", buffering=1 << 20)


# ------------------------------------------------------------------------------------------------ lines


def iter_lines(path: Path, rejects: RejectLog, max_line_bytes: int | None = None) -> Iterator[tuple[int, str]]:
    """``(line_number, text)`` of each non-blank line, line ending removed; bad lines are rejected.

    Lines are decoded one by one so a bad byte rejects one row (:data:`NOT_UTF8`, the byte offset in
    ``raw``). With ``max_line_bytes`` a longer line is rejected (:data:`LINE_TOO_LONG`) and skipped in
    bounded reads, never held whole, so one runaway line cannot exhaust memory. A UTF-8 byte order mark
    at the start of the file (Windows editors write one) is dropped, not read as part of the first row. A
    truncated or corrupt ``.gz`` file is a :class:`DataError` naming it, raised when the damage is reached.
    """
    limit = -1 if max_line_bytes is None else max_line_bytes + 2  # room for "\r\n"
    with open_stream(path) as stream:
        number = 0
        while True:
            raw = _read_line(stream, limit, path)
            if not raw:
                return
            number += 1
            if len(raw) == limit and not raw.endswith(b"\n"):
                head = raw[:200]
                while (rest := _read_line(stream, limit, path)) and not rest.endswith(b"\n"):
                    pass
                rejects.add(path, number, None, LINE_TOO_LONG, head.decode("utf-8", "replace"))
                continue
            body = raw.rstrip(b"\r\n")
            if number == 1 and body.startswith(UTF8_BOM):
                body = body[len(UTF8_BOM) :]
            if max_line_bytes is not None and len(body) > max_line_bytes:
                rejects.add(path, number, None, LINE_TOO_LONG, body[:200].decode("utf-8", "replace"))
                continue
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError as err:
                rejects.add(path, number, None, NOT_UTF8, f"byte {err.start}: " + body.decode("utf-8", "replace"))
                continue
            if text.strip():
                yield number, text


def _read_line(stream: BinaryIO, limit: int, path: Path) -> bytes:
    """One ``readline``; gzip's EOFError or zlib error on a damaged file becomes a DataError naming the file."""
    try:
        return stream.readline(limit)
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise DataError(f"{path}: truncated or corrupt gzip file ({type(err).__name__}: {err})") from err


def iter_jsonl(
    path: Path, rejects: RejectLog, max_line_bytes: int | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line_number, object)`` of each line that is a JSON object; the other lines are :data:`MALFORMED`."""
    for number, text in iter_lines(path, rejects, max_line_bytes):
        try:
            row = json.loads(text)
        except json.JSONDecodeError as err:
            rejects.add(path, number, None, MALFORMED, f"JSON: {err.msg}: {text}")
            continue
        if not isinstance(row, dict):
            rejects.add(path, number, None, MALFORMED, f"not a JSON object: {text}")
            continue
        yield number, row


def iter_records(path: Path, rejects: RejectLog, max_line_bytes: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line_number, row)`` of each parseable row of a JSONL, CSV or TSV file (CSV/TSV need a header)."""
    fmt = file_format(path)
    if fmt == "jsonl":
        yield from iter_jsonl(path, rejects, max_line_bytes)
    else:
        yield from _iter_delimited(path, rejects, max_line_bytes, "," if fmt == "csv" else "\t")


def _iter_delimited(
    path: Path, rejects: RejectLog, max_line_bytes: int, delimiter: str
) -> Iterator[tuple[int, dict[str, Any]]]:
    current = [0]

    def texts() -> Iterator[str]:
        for number, text in iter_lines(path, rejects, max_line_bytes):
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


# ------------------------------------------------------------------------------------------------ fields


def field_names(renames: dict[str, str], names: Sequence[str]) -> dict[str, str]:
    """``{field: column}`` for ``names``, with ``data.fields`` renames applied (unknown renames refused)."""
    unknown = set(renames) - set(names)
    if unknown:
        raise DataError(f"data.fields: unknown field(s) {sorted(unknown)}; known: {list(names)}")
    return {name: renames.get(name, name) for name in names}


def required_str(row: dict[str, Any], column: str, name: str) -> str:
    value = row.get(column)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # numeric ids are common in logs
    if not isinstance(value, str) or not value.strip():
        raise RowError(name, MISSING_FIELD)
    return value.strip()


def optional_str(row: dict[str, Any], column: str) -> str | None:
    value = row.get(column)
    if value is None or value == "":
        return None
    return str(value)


def parse_position(value: Any) -> int:
    if isinstance(value, bool):
        raise RowError("position", BAD_POSITION)
    if isinstance(value, int):
        position = value
    elif isinstance(value, float) and value.is_integer():
        position = int(value)
    elif isinstance(value, str) and value.strip().isdigit():
        position = int(value)
    else:
        raise RowError("position", BAD_POSITION)
    if position < 1:
        raise RowError("position", BAD_POSITION)
    return position


def parse_clicked(value: Any) -> bool:
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
    raise RowError("clicked", BAD_CLICKED)


def parse_dwell(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise RowError("dwell", BAD_DWELL)
    try:
        dwell = float(value)
    except (TypeError, ValueError):
        raise RowError("dwell", BAD_DWELL) from None
    if not math.isfinite(dwell):
        raise RowError("dwell", BAD_DWELL)
    if dwell < 0:
        raise RowError("dwell", NEGATIVE_DWELL)
    return dwell


def parse_timestamp(value: Any) -> float | None:
    """Epoch seconds from ISO 8601 (no zone = UTC) or a number of epoch seconds; None when absent."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise RowError("timestamp", BAD_TIMESTAMP)
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = float(value)
        except ValueError:
            try:
                moment = datetime.fromisoformat(value.strip())
            except ValueError:
                raise RowError("timestamp", BAD_TIMESTAMP) from None
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            seconds = moment.timestamp()
    else:
        raise RowError("timestamp", BAD_TIMESTAMP)
    if not math.isfinite(seconds):
        raise RowError("timestamp", BAD_TIMESTAMP)
    return seconds


def iso(seconds: float | None) -> str | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC).isoformat()
