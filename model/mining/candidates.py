"""Mining, part 1: candidate negatives for a query, from one source.

Sources: ``random`` (uniform over the corpus; no ranking), ``bm25`` (BM25 over title + text), ``dense`` (a
bi-encoder's cosine over the whole corpus), and the click log's skip-above documents (shown above a clicked
result and skipped). *Re-mined* dense candidates are ``dense`` with the model being trained: the flow passes
the model of the previous round, nothing here changes.

A ranked source is a *scorer*: ``scorer(query_id)`` gives every corpus document a score, and
:func:`ranked_candidates` keeps the top ``depth`` with their 1-based rank and score. Those two numbers travel
with each negative into ``train_examples.jsonl``, so a study can show which ranks it trained on.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from denseflow.model.data.beir import Dataset

if TYPE_CHECKING:
    from denseflow.model.encoder import EncodingSettings
    from denseflow.model.index.bm25 import BM25Settings

Scorer = Callable[[str], np.ndarray]
"""``scorer(query_id)`` → the score of every corpus document, in corpus order."""

CANDIDATE_SOURCES = ("random", "bm25", "dense")


@dataclass(frozen=True)
class Candidate:
    """A document a ranked source returned for a query: its corpus position, 1-based rank and score."""

    index: int
    doc_id: str
    rank: int
    score: float


def ranked_candidates(scores: np.ndarray, doc_ids: Sequence[str], depth: int) -> list[Candidate]:
    """The top ``depth`` documents by score, ties broken by corpus order (so mining is reproducible)."""
    depth = min(depth, len(scores))
    if depth <= 0:
        return []
    top = np.argpartition(-scores, depth - 1)[:depth]
    top = top[np.lexsort((top, -scores[top]))]
    return [Candidate(int(i), doc_ids[i], rank, float(scores[i])) for rank, i in enumerate(top, start=1)]


def random_documents(rng: np.random.Generator, doc_ids: Sequence[str], excluded: set[str], count: int) -> list[str]:
    """Up to ``count`` distinct documents outside ``excluded``, uniformly; fewer only when fewer remain.

    Rejection sampling is cheap when the corpus is large against ``excluded`` (the usual case); a bounded
    number of tries then an exact draw over what is left means a corpus with fewer free documents than
    asked returns what it has instead of looping forever.
    """
    picked: list[str] = []
    taken = set(excluded)
    for _ in range(4 * count + 8 if doc_ids else 0):
        if len(picked) == count:
            return picked
        doc_id = doc_ids[int(rng.integers(len(doc_ids)))]
        if doc_id not in taken:
            taken.add(doc_id)
            picked.append(doc_id)
    if len(picked) < count:
        left = [doc_id for doc_id in doc_ids if doc_id not in taken]
        order = rng.permutation(len(left))[: count - len(picked)]
        picked += [left[i] for i in sorted(order)]
    return picked


def skip_above_documents(
    extra_negatives: Mapping[str, Sequence[str]] | None,
    query_id: str,
    judged: set[str],
    position: Mapping[str, int],
    limit: int,
    counts: Counter,
) -> list[str]:
    """The click log's skip-above documents of a query, best first, at most ``limit``.

    A judged positive is never a negative (counted ``judged_positive``); a document outside the corpus is
    counted ``extra_unknown`` and skipped.
    """
    if not extra_negatives or query_id not in extra_negatives or limit <= 0:
        return []
    picked: list[str] = []
    for doc_id in extra_negatives[query_id]:
        if len(picked) == limit:
            break
        if doc_id in judged:
            counts["judged_positive"] += 1
        elif doc_id not in position:
            counts["extra_unknown"] += 1
        elif doc_id not in picked:
            picked.append(doc_id)
    return picked


def dense_scorer(query_ids: list[str], query_embeddings: np.ndarray, doc_embeddings: np.ndarray) -> Scorer:
    """Inner-product scorer over L2-normalised embeddings (cosine similarity)."""
    row = {query_id: i for i, query_id in enumerate(query_ids)}
    return lambda query_id: doc_embeddings @ query_embeddings[row[query_id]]


def make_scorer(
    candidates: str,
    dataset: Dataset,
    split: str,
    model_dir: str | Path | None = None,
    encoding: EncodingSettings | None = None,
    bm25: BM25Settings | None = None,
) -> Scorer | None:
    """The scorer of a candidate source: None for ``random``, BM25 over title + text, or a dense model's cosine.

    Dense corpus embeddings go through the embedding cache (``encoding.cache_dir``): the teacher reading the same
    model at the same length and precision reuses them.
    """
    if candidates == "random":
        return None
    if candidates == "bm25":
        return bm25_scorer(dataset, bm25)
    if candidates == "dense":
        from denseflow.model.encoder import search_embeddings

        if model_dir is None or encoding is None:
            raise ValueError("dense candidates need a model folder and encoding settings (the cache folder among them)")
        query_ids = list(dataset.qrels[split])
        queries = [dataset.queries[q] for q in query_ids]
        _, doc_embeddings, query_embeddings = search_embeddings(model_dir, dataset.corpus, queries, encoding)
        return dense_scorer(query_ids, query_embeddings, doc_embeddings)
    raise ValueError(f"unknown candidate source {candidates!r} (one of {', '.join(CANDIDATE_SOURCES)})")


# One corpus at a time: a study mines BM25 candidates once per seed and arm, and the scores do not depend on
# either. SciFact's train queries × its corpus keep ~17 MB here.
_BM25_CACHE: dict[str, tuple[object, dict[str, np.ndarray]]] = {}


def bm25_scorer(dataset: Dataset, settings: BM25Settings | None = None) -> Scorer:
    """BM25 over title + text; the index and each query's scores are kept for the process's next call."""
    from denseflow.model.data.beir import corpus_fingerprint
    from denseflow.model.index.bm25 import BM25Index

    key = f"{corpus_fingerprint(dict(dataset.corpus))}|{settings}"
    if key not in _BM25_CACHE:
        _BM25_CACHE.clear()
        _BM25_CACHE[key] = (BM25Index(dataset.corpus, settings), {})
    index, memo = _BM25_CACHE[key]

    def scorer(query_id: str) -> np.ndarray:
        text = dataset.queries[query_id]
        if text not in memo:
            scores = index.scores(text)  # type: ignore[attr-defined]
            scores.setflags(write=False)  # shared between calls: nobody may edit it in place
            memo[text] = scores
        return memo[text]

    return scorer
