"""Mining, part 2: false-negative filters. Each one counts what it removed.

The top of a good ranking holds relevant documents nobody judged; trained as negatives they teach the model
to push true answers away. The filters, in the order they run:

- ``judged_positive``: a document judged relevant to the query is never a negative;
- ``rank_window``: ranks ``1..rank_start`` are skipped (0 by default: the teacher does this job better);
- ``teacher_margin``: a *teacher* (a dense model, by default the base model) scores the query against the
  positive and against each candidate; a candidate above ``margin × teacher(query, positive)`` is dropped.
  This is NV-Retriever's TopK-PercPos rule (Moreira et al., 2024, arXiv:2407.15831; 0.95 is their best);
- ``teacher_ceiling``: optionally, a candidate whose teacher similarity exceeds ``max_similarity`` is dropped,
  whatever the positive scored.

The miner's own score never feeds the teacher filter: a BM25 score above 0.95 × the positive's BM25 score
says "lexically close", which is what a hard negative should be, not "probably relevant". The old rule that
did exactly that (``miner_margin``: drop candidates whose *miner* score exceeds ``margin ×`` the positive's)
is kept only so the study's control arm can reproduce the old setting.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from denseflow.model.data.beir import Dataset
from denseflow.model.mining.candidates import Candidate

if TYPE_CHECKING:
    from denseflow.model.encoder import EncodingSettings


@dataclass
class Teacher:
    """Cosine similarities of one dense model: train queries against the corpus, by id."""

    query_row: dict[str, int]
    query_embeddings: np.ndarray
    doc_row: dict[str, int]
    doc_embeddings: np.ndarray

    def scores(self, query_id: str, doc_ids: Sequence[str]) -> np.ndarray:
        rows = [self.doc_row[doc_id] for doc_id in doc_ids]
        return self.doc_embeddings[rows] @ self.query_embeddings[self.query_row[query_id]]

    def score(self, query_id: str, doc_id: str) -> float:
        return float(self.scores(query_id, [doc_id])[0])


def load_teacher(model_dir: str | Path, dataset: Dataset, split: str, encoding: EncodingSettings) -> Teacher:
    """The teacher's embeddings of ``split``'s queries (at ``encoding.query_length``) and of the corpus (at
    ``encoding.document_length``, through the embedding cache)."""
    from denseflow.model.encoder import search_embeddings

    query_ids = list(dataset.qrels[split])
    queries = [dataset.queries[q] for q in query_ids]
    doc_ids, doc_embeddings, query_embeddings = search_embeddings(model_dir, dataset.corpus, queries, encoding)
    return Teacher(
        {q: i for i, q in enumerate(query_ids)}, query_embeddings, {d: i for i, d in enumerate(doc_ids)}, doc_embeddings
    )


def drop_judged(candidates: Sequence[Candidate], judged: set[str], counts: Counter) -> list[Candidate]:
    kept = [candidate for candidate in candidates if candidate.doc_id not in judged]
    counts["judged_positive"] += len(candidates) - len(kept)
    return kept


def drop_top_ranks(candidates: Sequence[Candidate], rank_start: int, counts: Counter) -> list[Candidate]:
    kept = [candidate for candidate in candidates if candidate.rank > rank_start]
    counts["rank_window"] += len(candidates) - len(kept)
    return kept


def teacher_filter(
    candidates: Sequence[Candidate],
    teacher_scores: Sequence[float],
    positive_score: float,
    margin: float,
    max_similarity: float | None,
    counts: Counter,
) -> list[tuple[Candidate, float]]:
    """``(candidate, teacher score)`` of those the teacher does not consider too close to the query.

    The margin rule needs a positive the teacher scores above zero: with a non-positive score,
    ``margin × score`` would keep only candidates below a negative similarity, so the rule is skipped
    and only the ceiling applies.
    """
    ceiling = margin * positive_score if positive_score > 0 else None
    kept = []
    for candidate, score in zip(candidates, teacher_scores, strict=True):
        if ceiling is not None and score > ceiling:
            counts["teacher_margin"] += 1
        elif max_similarity is not None and score > max_similarity:
            counts["teacher_ceiling"] += 1
        else:
            kept.append((candidate, float(score)))
    return kept


def miner_margin_filter(
    candidates: Sequence[Candidate], positive_miner_score: float, margin: float, counts: Counter
) -> list[Candidate]:
    """The old rule, for the study's control arm only: drop candidates the *miner* scores above the margin."""
    if positive_miner_score <= 0:
        return list(candidates)
    kept = [candidate for candidate in candidates if candidate.score <= margin * positive_miner_score]
    counts["miner_margin"] += len(candidates) - len(kept)
    return kept
