"""BM25 over title + text: the baseline, a source of hard negatives, and the sparse half of hybrid search.

One implementation for all three, on bm25s (Lù 2024): the index is a sparse (documents × terms) matrix of
precomputed term scores, so a query sums a few columns instead of scoring every document in Python the way
rank-bm25 does: at 1M documents, seconds against milliseconds per query (``bench/bm25_latency.py`` measures
it on the machine at hand), and it saves and loads as plain ``.npy`` files that a published
index version carries beside ``index.faiss``.

The formula is Okapi BM25 (``idf = ln((N − df + 0.5) / (df + 0.5))`` floored at 0, term part
``tf·(k1+1) / (tf + k1·(1 − b + b·|d|/avgdl))``), over terms made much as Anserini's BEIR baselines make them:
lowercase words, Lucene's English stopwords dropped, English stems (Snowball's, through PyStemmer), k1 0.9, b 0.4
(:class:`BM25Settings`). Every part of the project builds BM25 from one ``BM25Settings`` (``bm25:`` in the
configuration), and a saved index records it, so a query is analysed the way its index was.

The index is built here, in numpy, into bm25s's own arrays (its documented override point,
``build_index_from_ids``, still takes Python lists per document): bm25s's builder counts terms one document
at a time in Python, where this counts all of them at once with pandas/numpy. Publication rebuilds BM25 in full
on every corpus change, because idf is global: ``bench/incremental_publish.py`` logs the build's time, and
docs/benchmarks.md has the figures (tokenising is about as long as the counting). Queries, saving and loading
stay bm25s's.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import re
import uuid
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bm25s
import numpy as np
import pandas as pd
import scipy.sparse as sp
from tqdm.auto import tqdm

from denseflow.model.data.beir import Document
from denseflow.model.index.topk import top_k

# bm25s sets its own logger to DEBUG at import; keep its per-call chatter out of service and flow logs.
logging.getLogger("bm25s").setLevel(logging.WARNING)
log = logging.getLogger(__name__)

_TOKEN = re.compile(r"[a-z0-9]+")
# The old list, kept so versions published with it keep serving with their own tokenizer.
SHORT_STOPWORDS = frozenset(
    "a an and are as at be by for from has have in is it its of on or that the this to was were which with".split()
)
STOPWORD_LISTS: dict[str, frozenset[str]] = {
    # Lucene's EnglishAnalyzer list (bm25s ships it): what Anserini's BEIR baselines drop.
    "english": frozenset(bm25s.stopwords.STOPWORDS_EN),
    "short": SHORT_STOPWORDS,
    "none": frozenset(),
}
LEGACY_TOKENIZER = "lowercase [a-z0-9]+ minus denseflow.model.index.bm25.STOPWORDS"
META_FILE = "denseflow.json"


class BM25FormatError(ValueError):
    """A saved BM25 folder does not match what it claims to be (documents, tokenizer, parameters)."""


@dataclass(frozen=True)
class BM25Settings:
    """Okapi BM25's parameters and the analyzer that turns text into terms: lowercase ``[a-z0-9]+`` tokens, a
    stopword list dropped, then a Snowball stemmer (PyStemmer, as bm25s's ``stemmer`` argument takes it).

    The defaults follow Anserini's BEIR baseline (Kamphuis et al. 2020; Thakur et al. 2021): k1 0.9, b 0.4, Lucene's
    English stopwords, English stemming (Snowball's English here, as bm25s uses it; Lucene's analyzer applies the
    original Porter stemmer, ``stemmer: porter``). :attr:`tokenizer` names the analyzer; a saved index records it, and a query is
    always analysed the way its index was built (:meth:`from_tokenizer` reads the name back)."""

    k1: float = 0.9
    b: float = 0.4
    stemmer: str | None = "english"
    stopwords: str = "english"

    def __post_init__(self) -> None:
        if self.stopwords not in STOPWORD_LISTS:
            raise ValueError(f"bm25.stopwords: {self.stopwords!r} is not one of {sorted(STOPWORD_LISTS)}")
        if self.stemmer is not None and self.stemmer not in stemmer_languages():
            raise ValueError(f"bm25.stemmer: {self.stemmer!r} is not one of {stemmer_languages()} (or none)")

    @property
    def tokenizer(self) -> str:
        if self.stemmer is None and self.stopwords == "short":
            return LEGACY_TOKENIZER
        stem = f"snowball {self.stemmer}" if self.stemmer else "no stemming"
        return f"lowercase [a-z0-9]+ | stopwords {self.stopwords} | {stem}"

    @classmethod
    def from_tokenizer(cls, tokenizer: str, k1: float, b: float) -> BM25Settings:
        """The settings a saved index names; :class:`BM25FormatError` for a tokenizer this version cannot run."""
        if tokenizer == LEGACY_TOKENIZER:
            return cls(k1, b, None, "short")
        match = re.fullmatch(r"lowercase \[a-z0-9\]\+ \| stopwords (\w+) \| (?:snowball (\w+)|no stemming)", tokenizer)
        if match is None:
            raise BM25FormatError(f"unknown BM25 tokenizer {tokenizer!r}")
        try:
            return cls(k1, b, match.group(2), match.group(1))
        except ValueError as err:
            raise BM25FormatError(f"BM25 tokenizer {tokenizer!r}: {err}") from err

    def describe(self) -> dict[str, Any]:
        return {
            "k1": self.k1,
            "b": self.b,
            "stemmer": self.stemmer,
            "stopwords": self.stopwords,
            "tokenizer": self.tokenizer,
        }

    def terms(self, words: Sequence[str]) -> list[str | None]:
        """Each distinct word's term: None for a stopword, else its stem."""
        stop = STOPWORD_LISTS[self.stopwords]
        kept = [word for word in words if word not in stop]
        stems = iter(_stemmer(self.stemmer).stemWords(kept) if self.stemmer else kept)
        return [None if word in stop else next(stems) for word in words]

    def tokenize(self, text: str) -> list[str]:
        """A text's terms (a query's, or one document's)."""
        return [term for term in self.terms(_TOKEN.findall(text.lower())) if term is not None]


LEGACY_BM25 = BM25Settings(1.5, 0.75, None, "short")


@functools.cache
def stemmer_languages() -> list[str]:
    import Stemmer

    return sorted(Stemmer.algorithms())


@functools.cache
def _stemmer(language: str):  # noqa: ANN202 - Stemmer.Stemmer, which has no stubs
    import Stemmer

    return Stemmer.Stemmer(language)


def _okapi(k1: float, b: float) -> bm25s.BM25:
    # bm25s names the parts: "atire" term frequency is tf·(k1+1)/(tf + k1·norm), "robertson" idf is the Okapi one.
    return bm25s.BM25(k1=k1, b=b, method="atire", idf_method="robertson")


@dataclass(frozen=True)
class TermCounts:
    """How often each vocabulary term (stopwords out) occurs in each document: a documents × terms CSR matrix.

    BM25's idf and average length are corpus-wide, so a changed corpus needs its score matrix recomputed, but a
    document's term counts depend on its text alone: publication keeps them beside each corpus snapshot, keyed
    by content hash, and counts only the documents that are new or edited (:func:`reuse_counts`)."""

    vocabulary: list[str]  # every term occurs in at least one document
    matrix: sp.csr_matrix


def words(text: str) -> list[str]:
    """A text's lowercase ``[a-z0-9]+`` words, before stopwords and stemming (:meth:`BM25Settings.terms`)."""
    return _TOKEN.findall(text.lower())


def count_terms(tokens: Sequence[list[str]], settings: BM25Settings | None = None) -> TermCounts:
    """The term counts of ``tokens`` (one list of :func:`words` per document) under ``settings``' analyzer:
    stopwords dropped and the rest stemmed once per distinct word, not once per occurrence; vocabulary in order
    of first appearance, as bm25s numbers it."""
    settings = settings or BM25Settings()
    documents = len(tokens)
    lengths = np.fromiter((len(words) for words in tokens), dtype=np.int64, count=documents)
    flat = np.fromiter(itertools.chain.from_iterable(tokens), dtype=object, count=int(lengths.sum()))
    codes, distinct = pd.factorize(flat)
    term_of = settings.terms(list(distinct))
    kept = np.array([term is not None for term in term_of], dtype=bool)
    # Words that stem alike share one term: renumber them to the term's first appearance.
    term_codes, terms = pd.factorize(np.array([term for term in term_of if term is not None], dtype=object))
    renumbered = np.full(len(distinct), -1, dtype=np.int64)
    renumbered[kept] = term_codes
    document_of = np.repeat(np.arange(documents, dtype=np.int64), lengths)
    keep = kept[codes]
    codes, document_of = renumbered[codes[keep]], document_of[keep]
    vocabulary = list(terms)
    width = max(len(vocabulary), 1)
    pairs, frequency = np.unique(document_of * width + codes, return_counts=True)
    matrix = sp.csr_matrix(
        (frequency.astype(np.int32), (pairs // width, pairs % width)), shape=(documents, len(vocabulary))
    )
    return TermCounts(vocabulary, matrix)


def okapi_from_counts(counts: TermCounts, k1: float, b: float) -> tuple[dict[str, Any], list[str]]:
    """bm25s's score matrix (CSC, documents × terms, float32) from term counts, and its vocabulary.

    The same numbers as ``bm25s.BM25(method="atire", idf_method="robertson").index(...)`` over the same tokens:
    Robertson idf floored at 0, ATIRE term part."""
    matrix, vocabulary = counts.matrix.tocsr(), counts.vocabulary
    documents = matrix.shape[0]
    doc_frequency = np.bincount(matrix.indices, minlength=len(vocabulary))
    length = np.asarray(matrix.sum(axis=1)).ravel()
    rows = np.repeat(np.arange(documents, dtype=np.int64), np.diff(matrix.indptr))
    columns, frequency = matrix.indices, matrix.data.astype(np.float64)
    idf = np.log(np.maximum((documents - doc_frequency + 0.5) / (doc_frequency + 0.5), 1.0)).astype(np.float32)
    norm = 1 - b + b * length[rows] / length.mean()
    score = (frequency * (k1 + 1) / (frequency + k1 * norm)).astype(np.float32) * idf[columns]
    scored = sp.csc_matrix((score, (rows, columns)), shape=(documents, len(vocabulary)), dtype=np.float32)
    return {"data": scored.data, "indices": scored.indices, "indptr": scored.indptr, "num_docs": documents}, vocabulary


def save_counts(path: Path, counts: TermCounts, hashes: Sequence[str], settings: BM25Settings) -> None:
    """Write ``counts`` with each row's content hash, whole or not at all (a temporary name, then a rename)."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.npz")
    matrix = counts.matrix.tocsr()
    np.savez(
        partial,
        tokenizer=np.array(settings.tokenizer),
        # One newline-joined byte string each: a fixed-width string array is as wide as its longest entry.
        hashes=np.frombuffer("\n".join(hashes).encode(), dtype=np.uint8),
        vocabulary=np.frombuffer("\n".join(counts.vocabulary).encode(), dtype=np.uint8),
        data=matrix.data,
        indices=matrix.indices,
        indptr=matrix.indptr,
        shape=np.array(matrix.shape),
    )
    os.replace(partial, path)


def load_counts(path: Path, settings: BM25Settings) -> tuple[list[str], TermCounts] | None:
    """The hashes and counts :func:`save_counts` wrote, or None when the file is unreadable, damaged or was
    written by another tokenizer than ``settings``' (the caller then counts from the texts)."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            if str(stored["tokenizer"]) != settings.tokenizer:
                return None
            matrix = sp.csr_matrix((stored["data"], stored["indices"], stored["indptr"]), shape=tuple(stored["shape"]))
            hashes, vocabulary = (_lines(stored["hashes"]), _lines(stored["vocabulary"]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        log.warning("%s: term counts unreadable (%s); counting from the texts", path, err)
        return None
    if matrix.shape != (len(hashes), len(vocabulary)):
        log.warning("%s: term counts damaged (shape %s); counting from the texts", path, matrix.shape)
        return None
    return hashes, TermCounts(vocabulary, matrix)


def _lines(stored: np.ndarray) -> list[str]:
    text = stored.tobytes().decode()
    return text.split("\n") if text else []


def reuse_counts(
    hashes: Sequence[str],
    earlier: tuple[list[str], TermCounts] | None,
    texts_of: Callable[[list[int]], list[str]],
    settings: BM25Settings,
) -> tuple[TermCounts, int]:
    """Term counts of the documents ``hashes`` names, in that order: rows of ``earlier`` where it holds the same
    text, the rest counted from ``texts_of(rows)``. Returns the counts and how many documents were counted."""
    earlier_row: dict[str, int] = {}
    if earlier is not None:
        for row, digest in enumerate(earlier[0]):
            earlier_row.setdefault(digest, row)
    missing = [row for row, digest in enumerate(hashes) if digest not in earlier_row]
    fresh = count_terms([words(text) for text in texts_of(missing)], settings) if missing else None
    if earlier is None:
        assert fresh is not None and len(missing) == len(hashes)
        return fresh, len(missing)
    old = earlier[1]
    vocabulary = list(old.vocabulary)
    if fresh is not None:
        column = {term: i for i, term in enumerate(vocabulary)}
        for term in fresh.vocabulary:
            if term not in column:
                column[term] = len(vocabulary)
                vocabulary.append(term)
        remap = np.array([column[term] for term in fresh.vocabulary], dtype=np.int64)
        fresh_matrix = sp.csr_matrix(
            (fresh.matrix.data, remap[fresh.matrix.indices], fresh.matrix.indptr),
            shape=(fresh.matrix.shape[0], len(vocabulary)),
        )
    else:
        fresh_matrix = sp.csr_matrix((0, len(vocabulary)), dtype=np.int32)
    old_matrix = old.matrix.tocsr(copy=True)  # resized below: the caller's matrix stays as it was
    old_matrix.resize(old_matrix.shape[0], len(vocabulary))
    # Stack the reused rows, then the counted ones, and put them back in the corpus's order.
    reused = [row for row, digest in enumerate(hashes) if digest in earlier_row]
    stacked = sp.vstack([old_matrix[[earlier_row[hashes[row]] for row in reused]], fresh_matrix], format="csr")
    order = np.empty(len(hashes), dtype=np.int64)
    order[np.array(reused + missing, dtype=np.int64)] = np.arange(len(hashes))
    counts = stacked[order]
    # Terms only the deleted or edited documents held: dropped, so the vocabulary does not grow with every snapshot.
    present = np.flatnonzero(np.bincount(counts.indices, minlength=len(vocabulary)))
    return TermCounts([vocabulary[i] for i in present], counts[:, present].tocsr()), len(missing)


class BM25Index:
    """Okapi BM25 over ``Document.full_text``; rows follow ``doc_ids``; terms and parameters from ``settings``."""

    def __init__(self, corpus: Mapping[str, Document] | None = None, settings: BM25Settings | None = None) -> None:
        self.doc_ids: list[str] = []
        self.settings = settings or BM25Settings()
        self._bm25 = _okapi(self.settings.k1, self.settings.b)
        if corpus is not None:
            self._index_tokens(list(corpus), [words(corpus[doc_id].full_text) for doc_id in corpus])

    @classmethod
    def from_texts(
        cls, doc_ids: Sequence[str], texts: Iterable[str], settings: BM25Settings | None = None
    ) -> BM25Index:
        """An index over ``texts`` (already title + text), row ``i`` being ``doc_ids[i]``."""
        return cls.from_tokens(doc_ids, (words(text) for text in texts), settings)

    @classmethod
    def from_tokens(
        cls, doc_ids: Sequence[str], tokens: Iterable[list[str]], settings: BM25Settings | None = None
    ) -> BM25Index:
        """An index over documents already split into :func:`words` (the latency bench's synthetic corpus)."""
        index = cls(settings=settings)
        index._index_tokens(list(doc_ids), list(tokens))
        return index

    @classmethod
    def from_counts(cls, doc_ids: Sequence[str], counts: TermCounts, settings: BM25Settings | None = None) -> BM25Index:
        """An index over documents' term counts (:func:`count_terms`, :func:`reuse_counts`, made with the same
        ``settings``' analyzer), row ``i`` being ``doc_ids[i]``."""
        if counts.matrix.shape[0] != len(doc_ids) or not len(doc_ids):
            raise ValueError(f"{counts.matrix.shape[0]} counted documents for {len(doc_ids)} ids (need at least one)")
        index = cls(settings=settings)
        index._index_counts(list(doc_ids), counts)
        return index

    def _index_tokens(self, doc_ids: list[str], tokens: list[list[str]]) -> None:
        if len(tokens) != len(doc_ids) or not tokens:
            raise ValueError(f"{len(tokens)} texts for {len(doc_ids)} document ids (need at least one of each)")
        self._index_counts(doc_ids, count_terms(tokens, self.settings))

    def _index_counts(self, doc_ids: list[str], counts: TermCounts) -> None:
        self.doc_ids = doc_ids
        scores, vocab = okapi_from_counts(counts, self._bm25.k1, self._bm25.b)
        self._bm25.scores = scores
        self._bm25.vocab_dict = {term: i for i, term in enumerate(vocab)}
        # As bm25s.BM25.index leaves it: an id for the empty token, past the matrix's last column.
        self._bm25.vocab_dict[""] = len(vocab)
        self._bm25.unique_token_ids_set = set(self._bm25.vocab_dict.values())
        self._bm25.nonoccurrence_array = None

    # ------------------------------------------------------------------ files
    def save(self, folder: Path) -> list[str]:
        """Write the index under ``folder`` (bm25s's arrays, vocabulary and parameters, plus our metadata).

        Document ids are not written: the caller stores them once for both indexes of a version.
        Returns the files written, relative to ``folder``.
        """
        folder = Path(folder)
        self._bm25.save(folder, show_progress=False)
        meta = {
            "library": f"bm25s {bm25s.__version__}",
            "tokenizer": self.settings.tokenizer,
            "stemmer": self.settings.stemmer,
            "stopwords": self.settings.stopwords,
            "documents": len(self.doc_ids),
            "k1": self._bm25.k1,
            "b": self._bm25.b,
            "method": self._bm25.method,
            "idf_method": self._bm25.idf_method,
        }
        (folder / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")
        return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())

    @classmethod
    def load(
        cls, folder: Path, doc_ids: Sequence[str], mmap: bool = False, expected: BM25Settings | None = None
    ) -> BM25Index:
        """Read a folder :meth:`save` wrote; ``doc_ids`` must be the ids it was built over, in row order.

        Queries are analysed with the tokenizer the folder records (a version published before stemming keeps
        serving unstemmed); with ``expected`` (what the manifest promised) any other tokenizer or k1/b is refused.
        """
        folder = Path(folder)
        try:
            meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise BM25FormatError(f"{folder / META_FILE}: unreadable ({err})") from err
        try:
            settings = BM25Settings.from_tokenizer(str(meta.get("tokenizer")), float(meta["k1"]), float(meta["b"]))
        except (KeyError, TypeError, ValueError) as err:
            raise BM25FormatError(f"{folder}: {err}") from err
        if expected is not None and settings != expected:
            raise BM25FormatError(
                f"{folder}: built with {settings.describe()}, but its manifest says {expected.describe()}"
            )
        index = cls.__new__(cls)
        index.settings = settings
        index._bm25 = bm25s.BM25.load(folder, mmap=mmap, show_progress=False)
        count = int(index._bm25.scores["num_docs"])
        if count != len(doc_ids) or meta.get("documents") != count:
            raise BM25FormatError(
                f"{folder}: index holds {count} documents, metadata {meta.get('documents')}, ids {len(doc_ids)}"
            )
        index.doc_ids = list(doc_ids)
        return index

    # ------------------------------------------------------------------ scoring
    @property
    def params(self) -> dict[str, Any]:
        return {"method": "okapi", **self.settings.describe()}

    def scores(self, query: str) -> np.ndarray:
        """Score of every document, in ``doc_ids`` order (all zeros when no query term is in the corpus)."""
        vocab = self._bm25.vocab_dict
        ids = [vocab[token] for token in self.settings.tokenize(query) if token in vocab]
        if not ids:
            return np.zeros(len(self.doc_ids), dtype=np.float32)
        return np.asarray(self._bm25.get_scores_from_ids(ids), dtype=np.float32)

    def search(self, query: str, k: int) -> list[tuple[str, float]]:
        """The ``k`` best ``(doc_id, score)`` pairs, best first (ties by corpus order)."""
        positions, scores = top_k(self.scores(query), k)
        return [(self.doc_ids[i], float(s)) for i, s in zip(positions, scores, strict=True)]

    def search_many(self, queries: Mapping[str, str], k: int, progress: bool = True) -> dict[str, dict[str, float]]:
        """A run: ``{query_id: {doc_id: score}}`` with the top ``k`` documents per query."""
        return {
            query_id: dict(self.search(text, k))
            for query_id, text in tqdm(queries.items(), desc="BM25 search", disable=not progress)
        }
