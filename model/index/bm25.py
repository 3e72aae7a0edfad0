"""BM25 over title + text with rank-bm25's ``BM25Okapi``: a baseline and a source of hard negatives."""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
from denseflow.model.data.beir import Document
from denseflow.model.index.topk import top_k
from rank_bm25 import BM25Okapi
from tqdm.auto import tqdm

_TOKEN = re.compile(r"[a-z0-9]+")
# A short list: BM25's idf already discounts frequent words; these only waste time per query.
STOPWORDS = frozenset(
    "a an and are as at be by for from has have in is it its of on or that the this to was were which with".split()
)


def tokenize(text: str) -> list[str]:
    return [token for token in _TOKEN.findall(text.lower()) if token not in STOPWORDS]


class BM25Index:
    """Okapi BM25 (k1=1.5, b=0.75, rank-bm25's defaults) over ``Document.full_text``."""

    def __init__(self, corpus: Mapping[str, Document]) -> None:
        self.doc_ids = list(corpus)
        self._bm25 = BM25Okapi([tokenize(corpus[doc_id].full_text) for doc_id in self.doc_ids])

    def scores(self, query: str) -> np.ndarray:
        """Score of every document, in ``doc_ids`` order."""
        return np.asarray(self._bm25.get_scores(tokenize(query)), dtype=np.float32)

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
