"""Choices on evidence: the prior stands unless the dev winner beats it by a paired test."""

from __future__ import annotations

import pytest

from denseflow.model.config import EvalConfig
from denseflow.model.evaluation.choice import choose_on_evidence
from denseflow.model.evaluation.evaluate import choose_fusion


def test_a_dev_winner_that_is_better_on_most_queries_replaces_the_prior():
    prior = {f"q{i}": 0.5 for i in range(40)}
    winner = {f"q{i}": 0.7 + 0.001 * i for i in range(40)}
    choice = choose_on_evidence("fusion", "prior", {"prior": prior, "other": winner})
    assert choice.used == "other"
    assert choice.p_value is not None and choice.p_value < 0.05


def test_a_dev_winner_within_noise_leaves_the_prior_in_place_and_says_so():
    prior = {f"q{i}": 0.5 for i in range(40)}
    noisy = dict(prior) | {"q0": 0.9, "q1": 0.3, "q2": 0.8}
    choice = choose_on_evidence("fusion", "prior", {"prior": prior, "other": noisy})
    assert choice.dev_winner == "other"
    assert choice.used == "prior"
    assert "the prior stands" in choice.reason


def test_the_prior_wins_ties():
    same = {"q1": 0.5, "q2": 0.6}
    assert choose_on_evidence("x", "prior", {"other": same, "prior": same}).used == "prior"


def test_a_prior_missing_from_the_options_is_refused():
    with pytest.raises(ValueError, match="prior"):
        choose_on_evidence("x", "prior", {"other": {"q": 1.0}})


def dense_right_runs(queries: int) -> tuple[dict, dict, dict]:
    """Dense ranks the relevant document first on every query; BM25 ranks it second."""
    dense = {f"q{i}": {"x": 0.9, "y": 0.1} for i in range(queries)}
    bm25 = {f"q{i}": {"y": 9.0, "x": 1.0} for i in range(queries)}
    qrels = {f"q{i}": {"x": 1} for i in range(queries)}
    return dense, bm25, qrels


def test_fusion_keeps_the_even_prior_when_dev_cannot_tell_the_weights_apart():
    dense, bm25, qrels = dense_right_runs(3)
    fusion, record = choose_fusion(EvalConfig(), "dev", 3, True, (dense, bm25), qrels)
    assert (fusion.method, fusion.weight) == ("convex", 0.5)
    assert record.used == "convex@0.5"


def test_fusion_moves_off_the_prior_when_dev_shows_it_is_worse():
    dense, bm25, qrels = dense_right_runs(40)
    # At the even mix BM25's favourite y wins; only a dense-heavy weight puts the relevant x first.
    dense = {query: {"x": 0.9, "y": 0.5, "z": 0.1} for query in dense}
    bm25 = {query: {"y": 9.0, "z": 5.0, "x": 1.0} for query in bm25}
    fusion, record = choose_fusion(EvalConfig(fusion_methods=["convex"]), "dev", 40, True, (dense, bm25), qrels)
    assert record.overruled
    assert fusion.weight > 0.5


def test_the_best_of_many_noisy_options_does_not_overrule_the_prior():
    """Picked among 30 options that differ from the prior by noise alone, the winner must not pass as a real gain."""
    import numpy as np

    rng = np.random.default_rng(7)
    queries = [f"q{i}" for i in range(72)]
    prior = {q: float(v) for q, v in zip(queries, rng.uniform(0.3, 0.9, len(queries)), strict=True)}
    options = {"prior": prior} | {
        f"option{k}": {q: prior[q] + float(rng.normal(0, 0.08)) for q in queries} for k in range(30)
    }
    choice = choose_on_evidence("fusion", "prior", options, permutations=2000)
    assert choice.dev_winner != "prior" and choice.winner_dev > choice.prior_dev
    assert choice.used == "prior"
