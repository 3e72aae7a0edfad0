"""Training data from question/answer pairs; passages join the corpus de-duplicated by content.

QA pairs (JSONL or CSV/TSV): ``question``, ``answer`` (the passage), optional ``id`` (passage id) and
``title``. Passages join the corpus (``data.corpus`` when set) de-duplicated by a hash of their normalised
text, so one passage never sits under two ids, whichever source brought it first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from denseflow.model.config import DataConfig
from denseflow.model.data.assemble import (
    SourceReport,
    SourceResult,
    build_dataset,
    check_usable,
    passage_hash,
    query_key,
    read_base_corpus,
)
from denseflow.model.data.beir import Document
from denseflow.model.data.io import (
    ID_CONFLICT,
    DataError,
    RejectLog,
    RowError,
    field_names,
    iter_records,
    optional_str,
    required_str,
    source_files,
)

QA_FIELDS = ("question", "answer", "id", "title")


def load_qa(config: DataConfig, rejects: RejectLog) -> SourceResult:
    """Question/answer pairs at ``config.path``; passages join ``config.corpus`` de-duplicated by content."""
    if config.path is None:
        raise DataError("data.path: a QA file or folder is required for source 'qa'")
    corpus, corpus_folder = read_base_corpus(config.corpus, rejects)
    by_hash: dict[str, str] = {}
    for doc_id, doc in corpus.items():
        if doc.text.strip():
            by_hash.setdefault(passage_hash(doc.text), doc_id)
    names = field_names(config.fields, QA_FIELDS)
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
                question = required_str(row, names["question"], "question")
                answer = required_str(row, names["answer"], "answer")
                key = query_key(question)
                doc_id = _place_passage(row, names, answer, corpus, by_hash, report)
            except RowError as err:
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
    check_usable(report, rejects, files, config.min_usable_share)
    dataset, _ = build_dataset(
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
    title = " ".join((optional_str(row, names["title"]) or "").split())
    given_id = optional_str(row, names["id"])
    given_id = given_id.strip() if given_id else None
    content = passage_hash(text)
    if given_id and given_id in corpus:
        if passage_hash(corpus[given_id].text) != content:
            raise RowError("id", ID_CONFLICT)
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
