"""Exact top-k: one implementation for evaluation runs, BM25 and the recall checks; ties by position."""

from __future__ import annotations

import numpy as np

from denseflow.model.index.topk import exact_search, top_k


def test_exact_search_equals_full_sort():
    rng = np.random.default_rng(0)
    docs = rng.normal(size=(200, 16)).astype(np.float32)
    queries = rng.normal(size=(7, 16)).astype(np.float32)
    indices, scores = exact_search(queries, docs, k=10, chunk=3)
    expected = np.argsort(-(queries @ docs.T), axis=1)[:, :10]
    assert np.array_equal(indices, expected)
    assert np.allclose(scores, np.take_along_axis(queries @ docs.T, expected, axis=1))


def test_ties_come_out_in_position_order():
    positions, scores = top_k(np.array([0.0, 2.0, 0.0, 2.0, 0.0], dtype=np.float32), 4)
    assert positions.tolist() == [1, 3, 0, 2]
    assert scores.tolist() == [2.0, 2.0, 0.0, 0.0]


def test_k_larger_than_the_corpus_returns_every_row():
    rng = np.random.default_rng(1)
    indices, _ = exact_search(rng.normal(size=(3, 4)), rng.normal(size=(5, 4)), k=10)
    assert indices.shape == (3, 5)


def test_a_matrix_row_matches_the_same_vector_alone():
    scores = np.random.default_rng(2).normal(size=(4, 50)).astype(np.float32)
    rows, _ = top_k(scores, 7)
    assert rows[2].tolist() == top_k(scores[2], 7)[0].tolist()
