"""Distilling the served hybrid into the dense model, over pseudo-queries drawn from every document.

Training on judged pairs moves the query tower toward the judged tenth of the corpus only. GPL (Wang et al. 2022,
"GPL: Generative Pseudo Labeling for Unsupervised Domain Adaptation of Dense Retrieval") reaches the rest: one
pseudo-query per document, negatives from retrieval, and a teacher's scores as soft labels under ``MarginMSELoss``.
Here the teacher is the system the project already serves, the dense model fused with BM25, in the place of the
cross-encoder GPL needs and the project does not ship:

- **Queries are claim-like**: a document's title or its first sentence (a searcher types a title; a claim is one
  sentence). No generator model is downloaded.
- **The teacher** scores every document in the union of its two halves' top ``UNION_DEPTH`` for the pseudo-query:
  min-max over that union per half, the even convex prior (weight 0.5), as the served fusion does.
- **Round-trip filter** (Promptagator, Dai et al. 2022): a pseudo-query whose own document is not in the teacher's
  top ``candidates`` is ambiguous and dropped.
- **The positive is the source document**; negatives are drawn from the teacher's top ``candidates`` others.
- **Labels** are the teacher's scores mapped per query onto the dense half's own cosine range over the union, so a
  margin in a label is a margin in the student's cosine (MarginMSE compares them directly). For KL, the student's
  cosines and the labels are both read at ``MNRL_SCALE`` (MultipleNegativesRankingLoss' scale 20): a sharp,
  comparable pair of distributions without the loss shrinking by a small temperature's square.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import datasets
import numpy as np
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.losses import DistillKLDivLoss, MarginMSELoss
from sentence_transformers.util import pairwise_dot_score
from torch import Tensor, nn

from denseflow.model.config import HybridDistillConfig
from denseflow.model.data.beir import Document
from denseflow.model.encoder import EncodingSettings, cached_corpus_embeddings, encode, load_encoder
from denseflow.model.index.bm25 import BM25Index, BM25Settings
from denseflow.model.training.pseudo import MIN_QUERY_CHARS, draw_order

MIN_DOCUMENTS = 100
UNION_DEPTH = 100
TEACHER_WEIGHT = 0.5  # the served fusion's prior: min-max convex, even weight
MNRL_SCALE = 20.0
_FIRST_SENTENCE = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class PseudoQuery:
    doc_id: str
    text: str


@dataclass(frozen=True)
class DistillExample:
    """A pseudo-query, its source document first then the drawn negatives, and the teacher's calibrated scores."""

    query: str
    doc_ids: tuple[str, ...]
    scores: tuple[float, ...]


@dataclass(frozen=True)
class DistillLabels:
    examples: list[DistillExample]
    drawn: int
    dropped_round_trip: int


def claim_query(document: Document, kind: str) -> str | None:
    """The document's title, or its first sentence; None when too short to be a query."""
    if kind == "title":
        text = document.title.strip()
    else:
        sentences = [part for part in _FIRST_SENTENCE.split(document.text.strip(), maxsplit=1) if part]
        text = sentences[0].strip() if sentences else ""
    return text if len(text) >= MIN_QUERY_CHARS else None


def claim_queries(corpus: Mapping[str, Document], kind: str, count: int, seed: int = 42) -> list[PseudoQuery]:
    """Up to ``count`` pseudo-queries of ``kind``, one per document, documents in a stable seeded order."""
    queries = []
    for doc_id in draw_order(corpus, seed):
        if len(queries) >= count:
            break
        text = claim_query(corpus[doc_id], kind)
        if text is not None:
            queries.append(PseudoQuery(doc_id, text))
    return queries


def _min_max(values: np.ndarray) -> np.ndarray:
    spread = float(values.max() - values.min())
    return (values - values.min()) / spread if spread > 0 else np.zeros_like(values)


def teacher_scores(dense: np.ndarray, bm25: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The union of both halves' top ``UNION_DEPTH`` (document positions) and the hybrid's calibrated score on each."""
    depth = min(UNION_DEPTH, len(dense))
    union = np.union1d(np.argpartition(-dense, depth - 1)[:depth], np.argpartition(-bm25, depth - 1)[:depth])
    fused = TEACHER_WEIGHT * _min_max(dense[union]) + (1 - TEACHER_WEIGHT) * _min_max(bm25[union])
    low, high = float(dense[union].min()), float(dense[union].max())
    return union, low + (high - low) * fused


def label_pseudo_queries(
    queries: Sequence[PseudoQuery],
    doc_ids: Sequence[str],
    doc_embeddings: np.ndarray,
    query_embeddings: np.ndarray,
    bm25_scores: Callable[[str], np.ndarray],
    settings: HybridDistillConfig,
    seed: int = 42,
) -> DistillLabels:
    """Each pseudo-query labelled by the hybrid teacher (dense cosine over ``doc_embeddings`` fused with BM25)."""
    position = {doc_id: i for i, doc_id in enumerate(doc_ids)}
    rng = np.random.default_rng(seed)
    examples, dropped = [], 0
    for query, embedding in zip(queries, query_embeddings, strict=True):
        union, scores = teacher_scores(doc_embeddings @ embedding, np.asarray(bm25_scores(query.text), np.float32))
        ranked = union[np.argsort(-scores, kind="stable")][: settings.candidates]
        source = position[query.doc_id]
        if source not in ranked:
            dropped += 1
            continue
        others = [int(i) for i in ranked if i != source]
        negatives = rng.choice(others, size=settings.negatives, replace=False)
        score_of = dict(zip(union.tolist(), scores.tolist(), strict=True))
        chosen = [source, *negatives.tolist()]
        examples.append(
            DistillExample(query.text, tuple(doc_ids[i] for i in chosen), tuple(score_of[i] for i in chosen))
        )
    return DistillLabels(examples, len(queries), dropped)


def distill_dataset(examples: Sequence[DistillExample], corpus: Mapping[str, Document]) -> datasets.Dataset:
    """Columns ``anchor, positive, negative_1..n, label``: the layout MarginMSELoss and DistillKLDivLoss read."""
    negatives = len(examples[0].doc_ids) - 1
    columns: dict[str, list] = {"anchor": [example.query for example in examples]}
    columns["positive"] = [corpus[example.doc_ids[0]].full_text for example in examples]
    for i in range(negatives):
        columns[f"negative_{i + 1}"] = [corpus[example.doc_ids[i + 1]].full_text for example in examples]
    columns["label"] = [list(example.scores) for example in examples]
    return datasets.Dataset.from_dict(columns)


def scaled_dot_score(a: Tensor, b: Tensor) -> Tensor:
    """The student's cosine at MultipleNegativesRankingLoss' scale (embeddings are L2-normalised)."""
    return MNRL_SCALE * pairwise_dot_score(a, b)


def distill_loss(model: SentenceTransformer, loss: str) -> nn.Module:
    if loss == "kl":
        return DistillKLDivLoss(
            model, similarity_fct=scaled_dot_score, temperature=1.0, teacher_temperature=1.0 / MNRL_SCALE
        )
    return MarginMSELoss(model)


def hybrid_labels(
    corpus: Mapping[str, Document],
    judged_pairs: int,
    settings: HybridDistillConfig,
    teacher_dir: str,
    encoding: EncodingSettings,
    bm25: BM25Settings,
    seed: int = 42,
) -> DistillLabels:
    """Draw ``ratio × judged_pairs`` pseudo-queries and label them with the hybrid of ``teacher_dir`` and BM25.

    Callers skip corpora under ``MIN_DOCUMENTS``: a teacher over a handful of documents ranks nothing worth copying.
    """
    if settings.queries == "none":
        return DistillLabels([], 0, 0)
    queries = claim_queries(corpus, settings.queries, max(1, round(settings.ratio * judged_pairs)), seed)
    if not queries:
        return DistillLabels([], 0, 0)
    doc_ids, doc_embeddings = cached_corpus_embeddings(
        teacher_dir,
        corpus,
        encoding.cache_dir,
        encoding.document_length,
        encoding.batch_size,
        encoding.precision,
        progress=False,
    )
    teacher = load_encoder(teacher_dir, encoding.query_length)
    query_embeddings = encode(
        teacher, [query.text for query in queries], "query", encoding.batch_size, encoding.precision
    )
    index = BM25Index(corpus, bm25)
    return label_pseudo_queries(queries, doc_ids, doc_embeddings, query_embeddings, index.scores, settings, seed)
