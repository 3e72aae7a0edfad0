"""Training data from click logs: positives by dwell or CTR (propensity-weighted), skip-above negatives.

Click logs are JSONL or CSV/TSV, plain or ``.gz``; a file or a folder of files, one row per document shown:

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

Every unusable row goes to the reject log with one reason from :data:`~denseflow.model.data.io.REASONS`.
Streaming keeps memory bounded by the number of distinct (query, document) pairs and open result pages, not
by the number of rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from denseflow.model.config import ClickConfig, DataConfig
from denseflow.model.data.assemble import (
    SourceReport,
    SourceResult,
    build_dataset,
    check_usable,
    query_key,
    read_base_corpus,
)
from denseflow.model.data.beir import Document, bundled_scifact_dir
from denseflow.model.data.io import (
    DUPLICATE_IMPRESSION_ROW,
    MISSING_FIELD,
    UNKNOWN_DOC,
    DataError,
    RejectLog,
    RowError,
    field_names,
    iso,
    iter_records,
    parse_clicked,
    parse_dwell,
    parse_position,
    parse_timestamp,
    required_str,
    source_files,
)

CLICK_FIELDS = ("query", "doc_id", "position", "clicked", "dwell", "timestamp", "session_id", "impression_id")


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
        """Validate one row and count it; raises ``RowError`` (nothing counted) when it is unusable.

        The common cases (str, int, bool values) are tested inline first: this runs once per row of logs
        with millions of rows, and the general parsers are several times slower.
        """
        query = row.get(names["query"])
        if type(query) is not str or not query or query[0].isspace() or query[-1].isspace():
            query = required_str(row, names["query"], "query")
        doc_id = row.get(names["doc_id"])
        if type(doc_id) is not str or not doc_id:
            doc_id = required_str(row, names["doc_id"], "doc_id")
        position = row.get(names["position"])
        if type(position) is not int or position < 1:
            if position is None:
                raise RowError("position", MISSING_FIELD)
            position = parse_position(position)
        clicked = row.get(names["clicked"])
        if type(clicked) is not bool:
            if clicked is None:
                raise RowError("clicked", MISSING_FIELD)
            clicked = parse_clicked(clicked)
        dwell = row.get(names["dwell"])
        if dwell is not None and (type(dwell) is not float or not 0.0 <= dwell < math.inf):
            dwell = parse_dwell(dwell)
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
            doc_id = required_str(row, names["doc_id"], "doc_id")
            if doc_id not in self.corpus:
                raise RowError("doc_id", UNKNOWN_DOC)
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
                raise RowError("doc_id", DUPLICATE_IMPRESSION_ROW)
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
    names = field_names(config.fields, CLICK_FIELDS)
    aggregator = ClickAggregator(config.clicks, corpus)
    report = SourceReport(source="clicks")
    files = source_files(config.path)
    for path in files:
        report.files.append(str(path))
        before = len(rejects)
        for number, row in iter_records(path, rejects, config.max_line_bytes):
            try:
                aggregator.add(row, names)
            except RowError as err:
                rejects.add(path, number, err.field_name, err.reason, row)
                continue
            report.usable_rows += 1
        report.rejected_rows += len(rejects) - before
    aggregator.close_all()
    check_usable(report, rejects, files, config.min_usable_share)

    report.clicks, report.impressions = aggregator.clicks, aggregator.impressions
    report.distinct_pairs = len(aggregator.pairs)
    report.first_timestamp, report.last_timestamp = iso(aggregator.first_timestamp), iso(aggregator.last_timestamp)
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
    dataset, skip_above = build_dataset(
        config, aggregator.query_keys, aggregator.query_text, positives, skip_lists, corpus, corpus_folder, report,
        rejects, files[0],
    )  # fmt: skip
    return SourceResult(dataset, skip_above, report)
