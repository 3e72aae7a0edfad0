"""Pseudo-queries from the corpus (model/training/pseudo.py)."""

from __future__ import annotations

from denseflow.model.data.beir import Document
from denseflow.model.training.pseudo import pseudo_pairs

CORPUS = {
    f"d{i}": Document(f"Title number {i} about bones", f"First sentence of {i} is here. Second one of {i} follows.")
    for i in range(10)
}


def test_title_pairs_ask_the_title_and_answer_with_the_text_alone():
    pairs = pseudo_pairs(CORPUS, "title", 4)
    assert len(pairs) == 4
    assert all(pair.query.startswith("Title number") for pair in pairs)
    assert all(not pair.positive.startswith("Title") for pair in pairs)


def test_ict_pairs_take_the_sentence_out_of_its_positive():
    for pair in pseudo_pairs(CORPUS, "ict", 5):
        assert pair.query not in pair.positive
        assert pair.positive.startswith("Title number")


def test_the_negative_is_another_document_and_the_draw_is_stable():
    first = pseudo_pairs(CORPUS, "title", 6, seed=1)
    assert first == pseudo_pairs(CORPUS, "title", 6, seed=1)
    assert all(pair.negative != f"{pair.query} {pair.positive}" for pair in first)


def test_none_or_a_zero_count_gives_nothing():
    assert pseudo_pairs(CORPUS, "none", 5) == []
    assert pseudo_pairs(CORPUS, "title", 0) == []
