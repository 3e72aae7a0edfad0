"""Hybrid-teacher distillation over claim-like pseudo-queries (model/training/hybrid_distill.py)."""

from __future__ import annotations

import numpy as np
import pytest

from denseflow.model.config import HybridDistillConfig, TrainConfig
from denseflow.model.data.beir import Document
from denseflow.model.training.hybrid_distill import (
    PseudoQuery,
    claim_queries,
    distill_dataset,
    label_pseudo_queries,
    teacher_scores,
)
from denseflow.model.training.trainer import train_bi_encoder
from tests.model.training.test_trainer import tiny_training_data

CORPUS = {
    "d1": Document("Vitamin D and bone density in the elderly", "Vitamin D raises density. Other text."),
    "d2": Document("short", "Statins lower cholesterol in adults. They also do more."),
    "d3": Document("Aspirin and heart attack prevention", "Aspirin thins blood"),
}


def test_claim_queries_are_titles_or_first_sentences_and_skip_what_is_too_short() -> None:
    titles = {query.doc_id: query.text for query in claim_queries(CORPUS, "title", 10)}
    assert titles == {"d1": "Vitamin D and bone density in the elderly", "d3": "Aspirin and heart attack prevention"}
    firsts = {query.doc_id: query.text for query in claim_queries(CORPUS, "first_sentence", 10)}
    assert firsts["d2"] == "Statins lower cholesterol in adults."
    assert "d3" in firsts and len(claim_queries(CORPUS, "title", 1)) == 1


def test_the_teacher_fuses_both_halves_and_speaks_in_the_dense_halfs_cosine_range() -> None:
    dense = np.array([0.9, 0.5, 0.1, 0.3], np.float32)
    bm25 = np.array([0.0, 10.0, 2.0, 0.0], np.float32)
    union, scores = teacher_scores(dense, bm25)
    by_doc = dict(zip(union.tolist(), scores.tolist(), strict=True))
    # min-max each half over the union, even weight, then mapped onto [0.1, 0.9]: doc 1 (BM25's top) ties doc 0.
    assert by_doc[0] == pytest.approx(0.1 + 0.8 * 0.5)
    assert by_doc[1] == pytest.approx(0.1 + 0.8 * (0.5 * 0.5 + 0.5))
    assert min(scores) >= 0.1 - 1e-6 and max(scores) <= 0.9 + 1e-6


def test_labels_put_the_source_first_and_drop_queries_the_teacher_does_not_find() -> None:
    doc_ids = [f"d{i}" for i in range(30)]
    doc_embeddings = np.eye(30, dtype=np.float32)
    queries = [PseudoQuery("d3", "found"), PseudoQuery("d7", "lost")]
    # The first query points at its own document; the second at another one entirely, and BM25 agrees.
    query_embeddings = np.stack([doc_embeddings[3], doc_embeddings[20]])

    def bm25(text: str) -> np.ndarray:
        scores = np.linspace(1.0, 0.0, 30, dtype=np.float32)
        scores[3 if text == "found" else 20] = 5.0
        return scores

    settings = HybridDistillConfig(queries="title", candidates=5, negatives=3)
    labels = label_pseudo_queries(queries, doc_ids, doc_embeddings, query_embeddings, bm25, settings)
    assert (labels.drawn, labels.dropped_round_trip, len(labels.examples)) == (2, 1, 1)
    example = labels.examples[0]
    assert example.doc_ids[0] == "d3" and len(set(example.doc_ids)) == 4
    assert example.scores[0] == max(example.scores)


def test_the_distillation_dataset_has_the_layout_the_losses_read() -> None:
    settings = HybridDistillConfig(queries="title", candidates=3, negatives=2)
    doc_ids = list(CORPUS)
    labels = label_pseudo_queries(
        [PseudoQuery("d1", "vitamin")],
        doc_ids,
        np.eye(3, dtype=np.float32),
        np.eye(3, dtype=np.float32)[:1],
        lambda text: np.array([3.0, 1.0, 0.5], np.float32),
        settings,
    )
    dataset = distill_dataset(labels.examples, CORPUS)
    assert dataset.column_names == ["anchor", "positive", "negative_1", "negative_2", "label"]
    assert dataset[0]["positive"] == CORPUS["d1"].full_text and len(dataset[0]["label"]) == 3


def test_negatives_must_leave_room_in_the_candidates() -> None:
    with pytest.raises(ValueError, match="hybrid_distill.negatives"):
        HybridDistillConfig(queries="title", candidates=3, negatives=3)


@pytest.mark.parametrize("loss", ["margin_mse", "kl"])
def test_training_mixes_the_teachers_labels_with_the_judged_pairs(tmp_path, tiny_beir_dir, tiny_model_dir, loss):
    dataset, examples = tiny_training_data(tiny_beir_dir)
    doc_ids = list(dataset.corpus)
    rng = np.random.default_rng(0)
    labels = label_pseudo_queries(
        [PseudoQuery(doc_id, dataset.corpus[doc_id].title or doc_id) for doc_id in doc_ids[:6]],
        doc_ids,
        np.eye(len(doc_ids), dtype=np.float32),
        np.eye(len(doc_ids), dtype=np.float32)[:6],
        lambda text: rng.random(len(doc_ids)).astype(np.float32),
        HybridDistillConfig(queries="title", candidates=4, negatives=2, loss=loss),
    )
    settings = TrainConfig(
        base_model=str(tiny_model_dir),
        batch_size=4,
        epochs=1,
        max_seq_length=32,
        interpolation=1.0,
        hybrid_distill=HybridDistillConfig(queries="title", candidates=4, negatives=2, loss=loss),
    )
    result = train_bi_encoder(examples, dataset, settings, tmp_path / "out", progress=False, distill=labels.examples)
    assert result.distill_examples == len(labels.examples) > 0
    # Both datasets' batches ran: more steps than the judged pairs alone give.
    assert result.steps > len(examples) // 4
    assert (result.model_dir / "modules.json").is_file()
