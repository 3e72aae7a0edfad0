"""Dev evaluation during training on a candidate corpus, so a CPU can afford it every half epoch.

Encoding the whole corpus per evaluation costs a full corpus pass each time; the candidate corpus (each dev query's
judged positives plus its BM25 top-N, plus the training positives) is a small fraction of it and ranks checkpoints
the same way in what was measured (README, "dev on a candidate corpus"). The figure is higher than the full-corpus one (fewer distractors), so it is used
to *compare checkpoints*, never reported as the model's quality.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
from sentence_transformers.util import cos_sim

from denseflow.model.data.beir import Dataset
from denseflow.model.encoder import encode
from denseflow.model.evaluation.metrics import per_query_metrics
from denseflow.model.index.bm25 import BM25Index, BM25Settings

EVALUATOR_NAME = "dev"
# The key the trainer logs: "eval_" + evaluator name + score function + metric.
DEV_METRIC = f"eval_{EVALUATOR_NAME}_cosine_ndcg@10"
# Enough to hold every training positive of collections of a few thousand judged queries, while encoding them
# stays a small part of each dev evaluation.
MAX_TRAINING_POSITIVES = 4000


def candidate_corpus(
    dataset: Dataset,
    split: str,
    candidates: int,
    training_positives: Iterable[str] = (),
    bm25_settings: BM25Settings | None = None,
) -> dict[str, str]:
    """Judged positives of every query of ``split``, each query's BM25 top-``candidates``, and the training
    positives.

    The training positives are the documents a fine-tuned model drags up for every query (they become attractors);
    without them in the candidate corpus, over-ranking them would cost nothing on dev and the recipe that
    memorises most would win. Above ``MAX_TRAINING_POSITIVES`` a stable hash sample of them is kept.
    """
    queries = dataset.split_queries(split)
    bm25 = BM25Index(dataset.corpus, bm25_settings)
    doc_ids: set[str] = set(
        stable_sample(sorted(set(training_positives) & set(dataset.corpus)), MAX_TRAINING_POSITIVES)
    )
    for query_id, text in queries.items():
        doc_ids |= {doc_id for doc_id, score in dataset.qrels[split][query_id].items() if score > 0}
        doc_ids |= {doc_id for doc_id, _ in bm25.search(text, candidates)}
    return {doc_id: dataset.corpus[doc_id].full_text for doc_id in sorted(doc_ids)}


def stable_sample(doc_ids: list[str], limit: int) -> list[str]:
    """At most ``limit`` ids, chosen by a hash of each id: the same id stays in when more are added."""
    if len(doc_ids) <= limit:
        return doc_ids
    return sorted(doc_ids, key=lambda doc_id: hashlib.sha256(doc_id.encode()).hexdigest())[:limit]


def dev_evaluator(
    dataset: Dataset,
    split: str,
    candidates: int,
    batch_size: int = 32,
    training_positives: Iterable[str] = (),
    bm25_settings: BM25Settings | None = None,
) -> InformationRetrievalEvaluator:
    """sentence-transformers' IR evaluator over the candidate corpus of ``split``; its main score is nDCG@10."""
    relevant = {
        query_id: {doc_id for doc_id, score in judged.items() if score > 0}
        for query_id, judged in dataset.qrels[split].items()
    }
    return InformationRetrievalEvaluator(
        queries=dataset.split_queries(split),
        corpus=candidate_corpus(dataset, split, candidates, training_positives, bm25_settings),
        relevant_docs=relevant,
        name=EVALUATOR_NAME,
        ndcg_at_k=[10],
        mrr_at_k=[10],
        accuracy_at_k=[1],
        precision_recall_at_k=[1, 10],
        map_at_k=[10],
        score_functions={"cosine": cos_sim},
        main_score_function="cosine",
        batch_size=batch_size,
        write_csv=False,
    )


def per_query_dev_ndcg(
    model: SentenceTransformer,
    evaluator: InformationRetrievalEvaluator,
    precision: str = "fp32",
    document_embeddings: np.ndarray | None = None,
) -> dict[str, float]:
    """Each dev query's nDCG@10 on ``evaluator``'s candidate corpus: what a paired test between two models needs
    (the evaluator itself reports only the mean). ``document_embeddings`` (in the evaluator's corpus order) skips the
    corpus encode when the document tower is known to be unchanged."""
    queries = encode(model, evaluator.queries, "query", evaluator.batch_size, precision)
    if document_embeddings is None:
        document_embeddings = dev_document_embeddings(model, evaluator, precision)
    scores = queries @ document_embeddings.T
    depth = min(10, scores.shape[1])
    run = {}
    for row, query_id in enumerate(evaluator.queries_ids):
        top = np.argpartition(-scores[row], depth - 1)[:depth]
        run[query_id] = {evaluator.corpus_ids[i]: float(scores[row, i]) for i in top}
    qrels = {query_id: dict.fromkeys(evaluator.relevant_docs[query_id], 1) for query_id in evaluator.queries_ids}
    return per_query_metrics(run, qrels, ks=(10,))["ndcg@10"]


def dev_document_embeddings(
    model: SentenceTransformer, evaluator: InformationRetrievalEvaluator, precision: str = "fp32"
) -> np.ndarray:
    return encode(model, evaluator.corpus, "document", evaluator.batch_size, precision)
