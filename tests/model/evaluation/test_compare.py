"""Comparing two systems before a promotion: paired tests, ranking changes, rank-biased overlap."""

from __future__ import annotations

import pytest

from denseflow.model.evaluation.compare import compare_systems, comparison_markdown, rank_biased_overlap


def test_rank_biased_overlap_is_one_for_identical_and_zero_for_disjoint_rankings():
    assert rank_biased_overlap(list("abcdefghij"), list("abcdefghij")) == pytest.approx(1.0)
    assert rank_biased_overlap(list("abcde"), list("vwxyz")) == pytest.approx(0.0)
    swapped_top = rank_biased_overlap(list("bacdefghij"), list("abcdefghij"))
    swapped_bottom = rank_biased_overlap(list("abcdefghji"), list("abcdefghij"))
    assert swapped_top < swapped_bottom < 1.0  # a change at the top weighs more


def test_a_comparison_reports_wins_losses_the_unseen_partition_and_the_most_changed_queries():
    queries = {f"q{i}": f"query {i}" for i in range(30)}
    a = {q: 0.5 for q in queries}
    b = {q: 0.7 for q in queries} | {"q0": 0.2}
    run_a = {q: {"d1": 3.0, "d2": 2.0, "d3": 1.0} for q in queries}
    run_b = dict(run_a) | {"q0": {"d9": 3.0, "d8": 2.0, "d7": 1.0}}
    comparison = compare_systems(
        "production", "candidate", a, b, run_a, run_b, queries, unseen=list(queries)[:25], titles={"d9": "Zinc"},
        permutations=1000,
    )  # fmt: skip
    assert comparison.all_queries is not None
    assert (comparison.all_queries.wins, comparison.all_queries.losses) == (29, 1)
    assert comparison.all_queries.p_value < 0.05
    assert comparison.unseen is not None and comparison.unseen.queries == 25
    assert [item.query_id for item in comparison.most_changed] == ["q0"]
    assert comparison.most_changed[0].top3_b[0] == "Zinc"
    assert comparison.overlap_at_10 == pytest.approx(29 / 30)  # identical 3-document rankings overlap fully
    report = comparison_markdown(comparison, "SciFact test")
    assert "| all judged | +0.1833" in report
    assert "Zinc" in report


def test_too_few_unseen_queries_are_not_tested():
    queries = {"q1": "a", "q2": "b", "q3": "c"}
    comparison = compare_systems("a", "b", {"q1": 0.1, "q2": 0.2, "q3": 0.3}, {"q1": 0.2, "q2": 0.2, "q3": 0.3}, {}, {},
                                 queries, unseen=["q1"], permutations=100)  # fmt: skip
    assert comparison.unseen is None
    assert "too few queries to test" in comparison_markdown(comparison, "x")
