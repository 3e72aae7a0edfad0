"""Dev evaluation during training on a candidate corpus, so a 2-core CPU can afford it every half epoch.

Encoding the whole corpus per evaluation costs minutes on a CPU; the candidate corpus (each dev query's judged
positives plus its BM25 top-N) costs seconds and ranks checkpoints the same way in what was measured (README,
"dev on a candidate corpus"). The figure is higher than the full-corpus one (fewer distractors), so it is used
to *compare checkpoints*, never reported as the model's quality.
"""

from __future__ import annotations

from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
from sentence_transformers.util import cos_sim

from denseflow.model.data.beir import Dataset
from denseflow.model.index.bm25 import BM25Index

EVALUATOR_NAME = "dev"
# The key the trainer logs: "eval_" + evaluator name + score function + metric.
DEV_METRIC = f"eval_{EVALUATOR_NAME}_cosine_ndcg@10"


def candidate_corpus(dataset: Dataset, split: str, candidates: int) -> dict[str, str]:
    """Judged positives of every query of ``split`` plus each query's BM25 top-``candidates``."""
    queries = dataset.split_queries(split)
    bm25 = BM25Index(dataset.corpus)
    doc_ids: set[str] = set()
    for query_id, text in queries.items():
        doc_ids |= {doc_id for doc_id, score in dataset.qrels[split][query_id].items() if score > 0}
        doc_ids |= {doc_id for doc_id, _ in bm25.search(text, candidates)}
    return {doc_id: dataset.corpus[doc_id].full_text for doc_id in sorted(doc_ids)}


def dev_evaluator(dataset: Dataset, split: str, candidates: int, batch_size: int = 32) -> InformationRetrievalEvaluator:
    """sentence-transformers' IR evaluator over the candidate corpus of ``split``; its main score is nDCG@10."""
    relevant = {
        query_id: {doc_id for doc_id, score in judged.items() if score > 0}
        for query_id, judged in dataset.qrels[split].items()
    }
    return InformationRetrievalEvaluator(
        queries=dataset.split_queries(split),
        corpus=candidate_corpus(dataset, split, candidates),
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
