"""Seen-/unseen-document partitions, their figures and the attractor count (model/evaluation/partition.py)."""

from __future__ import annotations

import pytest

from denseflow.model.evaluation.partition import (
    MIN_PARTITION_QUERIES,
    SEEN,
    UNSEEN,
    attractor_count,
    bootstrap_interval,
    partition_metrics,
    report_partitions,
    seen_document_split,
)


def test_a_query_is_seen_document_when_any_judged_document_was_judged_for_training():
    train = {"t1": {"d1": 1}, "t2": {"d2": 0}}
    test = {"a": {"d1": 1, "d5": 1}, "b": {"d5": 1}, "c": {"d2": 1}}
    parts = seen_document_split(test, [train])
    assert parts[SEEN] == ["a"]
    assert parts[UNSEEN] == ["b", "c"]  # d2 was judged non-relevant for training: not seen


def test_dev_judgments_count_as_seen_for_test():
    parts = seen_document_split({"a": {"d7": 1}}, [{"t": {"d1": 1}}, {"v": {"d7": 1}}])
    assert parts[SEEN] == ["a"]


def test_a_tiny_partition_gets_its_count_and_no_figure():
    per_query = {"ndcg@10": {f"q{i}": 1.0 if i < 25 else 0.0 for i in range(30)}}
    parts = {SEEN: [f"q{i}" for i in range(25)], UNSEEN: [f"q{i}" for i in range(25, 30)]}
    report = partition_metrics(per_query, parts)
    assert report[SEEN]["metrics"]["ndcg@10"] == 1.0
    assert report[UNSEEN]["metrics"] is None
    assert report[UNSEEN]["queries"] == 5
    assert str(MIN_PARTITION_QUERIES) in report[UNSEEN]["note"]


def test_reported_partitions_keep_the_json_shape_of_metrics_files_and_the_summary():
    per_query = {"ndcg@10": {f"q{i}": 1.0 if i < 25 else 0.0 for i in range(30)}}
    parts = {SEEN: [f"q{i}" for i in range(25)], UNSEEN: [f"q{i}" for i in range(25, 30)]}
    run = {f"q{i}": {"p1": 0.9, "x": 0.5} for i in range(30)}
    report = report_partitions(per_query, run, parts, {"p1"})
    seen, unseen = report[SEEN], report[UNSEEN]
    assert (seen.metrics["ndcg@10"], seen.training_positives_in_top10, seen.ndcg_interval) == (1.0, 1.0, (1.0, 1.0))
    assert list(seen.as_dict()) == ["queries", "metrics", "training_positives_in_top10", "ndcg@10_interval"]
    assert unseen.as_dict() == {"queries": 5, "metrics": None, "note": unseen.note}


def test_attractors_count_training_positives_in_the_top_ten():
    run = {"a": {"p1": 0.9, "x": 0.8, "p2": 0.7}, "b": {"y": 0.9}}
    assert attractor_count(run, ["a", "b"], {"p1", "p2"}) == pytest.approx(1.0)


def test_the_bootstrap_interval_holds_the_mean_and_narrows_with_more_queries():
    few = [0.0, 1.0] * 5
    many = [0.0, 1.0] * 200
    low_few, high_few = bootstrap_interval(few)
    low_many, high_many = bootstrap_interval(many)
    assert low_few <= 0.5 <= high_few
    assert high_many - low_many < high_few - low_few
