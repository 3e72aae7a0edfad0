"""Datasets in the BEIR layout: reading with validation, writing, fingerprints and the split guard.

The BEIR layout is the interchange format of the project (``corpus.jsonl``, ``queries.jsonl``,
``qrels/<split>.tsv``, each plain or ``.gz``). Every source is normalised to it and every dataset the
project writes can be read back by BEIR tools.

Bad rows never stop a load and are never silently dropped: each goes to a :class:`RejectLog` with the
file, line, field and one constant reason from :data:`denseflow.model.data.io.REASONS` (details in its
``raw``), and is counted. A missing file or a load that leaves nothing usable is a
:class:`DataError` naming the path.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from denseflow.model.data.io import (
    BAD_SCORE,
    DUPLICATE_ID,
    DUPLICATE_JUDGMENT,
    EMPTY_TEXT,
    EVAL_LEAK,
    MALFORMED,
    MISSING_FIELD,
    UNKNOWN_DOC,
    UNKNOWN_QUERY,
    DataError,
    RejectLog,
    iter_jsonl,
    iter_lines,
)

# DataError and RejectLog live in io, shared by every reader; callers keep importing them from here too.


@dataclass(frozen=True)
class Document:
    title: str
    text: str

    @property
    def full_text(self) -> str:
        """What encoders and BM25 read: BEIR's ``title + " " + text``."""
        return f"{self.title} {self.text}".strip()


@dataclass
class Dataset:
    """A corpus, its queries and judgments per split (``qrels[split][query_id][doc_id] = score``)."""

    corpus: dict[str, Document]
    queries: dict[str, str]
    qrels: dict[str, dict[str, dict[str, int]]]

    def split_queries(self, split: str) -> dict[str, str]:
        """Queries judged in ``split``, in qrels order."""
        return {qid: self.queries[qid] for qid in self.qrels.get(split, {})}


def bundled_scifact_dir() -> Path:
    """The SciFact copy shipped inside the package (see ``model/datasets/scifact/README.md``)."""
    return Path(str(resources.files("denseflow.model") / "datasets" / "scifact"))


def find_file(folder: Path, name: str) -> Path:
    """``folder/name`` or ``folder/name.gz``; a clear error naming both when neither exists."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(f"{folder / name}: file not found (nor {folder / name}.gz)")


def _string_field(row: dict[str, Any], name: str) -> str | None:
    value = row.get(name)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and name == "_id":
        return str(value)
    return value if isinstance(value, str) else None


def read_corpus(path: Path, rejects: RejectLog, max_line_bytes: int | None = None) -> dict[str, Document]:
    corpus: dict[str, Document] = {}
    for number, row in iter_jsonl(path, rejects, max_line_bytes):
        doc_id = _string_field(row, "_id")
        if not doc_id or not doc_id.strip():
            rejects.add(path, number, "_id", MISSING_FIELD, row)
            continue
        text = _string_field(row, "text")
        if text is None:
            rejects.add(path, number, "text", MISSING_FIELD, row)
            continue
        title = _string_field(row, "title") or ""
        if not text.strip() and not title.strip():
            rejects.add(path, number, "text", EMPTY_TEXT, row)
            continue
        if doc_id in corpus:
            rejects.add(path, number, "_id", DUPLICATE_ID, row)
            continue
        corpus[doc_id] = Document(title=title.strip(), text=text.strip())
    if not corpus:
        raise DataError(f"{path}: no usable documents ({len(rejects)} rows rejected so far)")
    return corpus


def read_queries(path: Path, rejects: RejectLog, max_line_bytes: int | None = None) -> dict[str, str]:
    queries: dict[str, str] = {}
    for number, row in iter_jsonl(path, rejects, max_line_bytes):
        query_id = _string_field(row, "_id")
        if not query_id or not query_id.strip():
            rejects.add(path, number, "_id", MISSING_FIELD, row)
            continue
        text = _string_field(row, "text")
        if text is None:
            rejects.add(path, number, "text", MISSING_FIELD, row)
            continue
        if not text.strip():
            rejects.add(path, number, "text", EMPTY_TEXT, row)
            continue
        if query_id in queries:
            rejects.add(path, number, "_id", DUPLICATE_ID, row)
            continue
        queries[query_id] = text.strip()
    if not queries:
        raise DataError(f"{path}: no usable queries ({len(rejects)} rows rejected so far)")
    return queries


def read_qrels(
    path: Path,
    queries: dict[str, str],
    corpus: dict[str, Document],
    rejects: RejectLog,
    max_line_bytes: int | None = None,
) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    for number, line in iter_lines(path, rejects, max_line_bytes):
        cells = line.split("\t")
        if number == 1 and cells[0].strip().lower() in {"query-id", "query_id", "qid"}:
            continue
        if len(cells) != 3:
            rejects.add(path, number, None, MALFORMED, f"expected 3 tab-separated columns, found {len(cells)}: {line}")
            continue
        query_id, doc_id, score_text = (cell.strip() for cell in cells)
        try:
            score = int(score_text)
        except ValueError:
            rejects.add(path, number, "score", BAD_SCORE, line)
            continue
        if query_id not in queries:
            rejects.add(path, number, "query-id", UNKNOWN_QUERY, line)
            continue
        if doc_id not in corpus:
            rejects.add(path, number, "corpus-id", UNKNOWN_DOC, line)
            continue
        if doc_id in qrels.get(query_id, {}):
            rejects.add(path, number, "corpus-id", DUPLICATE_JUDGMENT, line)
            continue
        qrels.setdefault(query_id, {})[doc_id] = score
    if not qrels:
        raise DataError(f"{path}: no usable judgments")
    return qrels


def beir_files(folder: Path, splits: Iterable[str]) -> list[Path]:
    """The files :func:`load_beir` reads for ``splits``: corpus, queries, then each split's qrels."""
    folder = Path(folder)
    qrels = [find_file(folder / "qrels", f"{split}.tsv") for split in dict.fromkeys(splits)]
    return [find_file(folder, "corpus.jsonl"), find_file(folder, "queries.jsonl"), *qrels]


def load_beir(folder: Path, splits: Iterable[str], rejects: RejectLog, max_line_bytes: int | None = None) -> Dataset:
    """Read and validate a BEIR folder; only the named splits are read (each must exist).

    ``max_line_bytes`` rejects longer lines unread (``data.max_line_bytes``); None reads lines of any length.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: dataset folder not found")
    corpus = read_corpus(find_file(folder, "corpus.jsonl"), rejects, max_line_bytes)
    queries = read_queries(find_file(folder, "queries.jsonl"), rejects, max_line_bytes)
    qrels = {
        split: read_qrels(find_file(folder / "qrels", f"{split}.tsv"), queries, corpus, rejects, max_line_bytes)
        for split in dict.fromkeys(splits)
    }
    return Dataset(corpus=corpus, queries=queries, qrels=qrels)


def remove_evaluation_leaks(dataset: Dataset, train_split: str, eval_splits: Iterable[str], rejects: RejectLog) -> int:
    """Drop from ``train_split`` every query that is also evaluated, by id or by normalised text.

    A training query seen again at evaluation inflates every metric, so this is enforced before mining,
    not left to the data's authors. Returns the number of training queries removed (each is rejected).
    """
    eval_ids = {qid for split in eval_splits if split != train_split for qid in dataset.qrels.get(split, {})}
    eval_texts = {normalise_text(dataset.queries[qid]) for qid in eval_ids}
    train = dataset.qrels[train_split]
    leaked = [qid for qid in train if qid in eval_ids or normalise_text(dataset.queries[qid]) in eval_texts]
    for qid in leaked:
        rejects.add(f"qrels/{train_split}.tsv", None, "query-id", EVAL_LEAK, qid)
        del train[qid]
    if not train:
        raise DataError(f"split {train_split!r}: every training query is also an evaluation query")
    return len(leaked)


def assert_no_leak(train_query_ids: Iterable[str], dataset: Dataset, eval_split: str) -> None:
    """Raise if any training query id is judged in the evaluation split (a last guard before training)."""
    leaked = set(train_query_ids) & set(dataset.qrels.get(eval_split, {}))
    if leaked:
        raise DataError(f"{len(leaked)} training queries are in evaluation split {eval_split!r}: {sorted(leaked)[:5]}")


def normalise_text(text: str) -> str:
    """Lower-case with collapsed whitespace: the key for de-duplicating queries and passages."""
    return " ".join(text.lower().split())


def write_beir(dataset: Dataset, folder: Path) -> Path:
    """Write ``dataset`` in the BEIR layout (plain files, readable by BEIR tools)."""
    folder = Path(folder)
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    with (folder / "corpus.jsonl").open("w", encoding="utf-8") as out:
        for doc_id, doc in dataset.corpus.items():
            out.write(json.dumps({"_id": doc_id, "title": doc.title, "text": doc.text}, ensure_ascii=False) + "\n")
    with (folder / "queries.jsonl").open("w", encoding="utf-8") as out:
        for query_id, text in dataset.queries.items():
            out.write(json.dumps({"_id": query_id, "text": text}, ensure_ascii=False) + "\n")
    for split, judgments in dataset.qrels.items():
        with (folder / "qrels" / f"{split}.tsv").open("w", encoding="utf-8", newline="") as out:
            writer = csv.writer(out, delimiter="\t", lineterminator="\n")
            writer.writerow(["query-id", "corpus-id", "score"])
            for query_id, docs in judgments.items():
                for doc_id, score in docs.items():
                    writer.writerow([query_id, doc_id, score])
    return folder


def fingerprint(dataset: Dataset) -> str:
    """A short SHA-256 of the normalised content: same data, same fingerprint, whatever the file order."""
    digest = hashlib.sha256()
    for doc_id in sorted(dataset.corpus):
        doc = dataset.corpus[doc_id]
        digest.update(f"d\t{doc_id}\t{doc.title}\t{doc.text}\n".encode())
    for query_id in sorted(dataset.queries):
        digest.update(f"q\t{query_id}\t{dataset.queries[query_id]}\n".encode())
    for split in sorted(dataset.qrels):
        for query_id in sorted(dataset.qrels[split]):
            for doc_id, score in sorted(dataset.qrels[split][query_id].items()):
                digest.update(f"r\t{split}\t{query_id}\t{doc_id}\t{score}\n".encode())
    return digest.hexdigest()[:16]


def corpus_fingerprint(corpus: dict[str, Document]) -> str:
    """Fingerprint of the corpus alone: the cache key of corpus embeddings and the index manifest."""
    digest = hashlib.sha256()
    for doc_id in sorted(corpus):
        digest.update(f"{doc_id}\t{corpus[doc_id].title}\t{corpus[doc_id].text}\n".encode())
    return digest.hexdigest()[:16]
