"""Metrics agree with an independent implementation (ranx) and with hand-computed BEIR definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from denseflow.model.evaluation.metrics import (
    evaluate_run,
    read_trec_run,
    recall_curve,
    run_from_search,
    write_trec_run,
)

QRELS = {
    "q1": {"d1": 1, "d4": 2},
    "q2": {"d2": 1},
    "q3": {"d9": 1},  # never retrieved: every metric is 0 for it
    "q4": {"d3": 3, "d5": 1, "d6": 1},
}
RUN = {
    "q1": {"d4": 0.9, "d7": 0.8, "d1": 0.7, "d2": 0.1},
    "q2": {"d3": 0.95, "d5": 0.9, "d6": 0.85, "d8": 0.8, "d7": 0.7, "d2": 0.65},
    "q3": {"d1": 0.5},
    "q4": {"d5": 0.99, "d8": 0.9, "d3": 0.8},
}


def test_metrics_match_trec_eval():
    """pytrec_eval is trec_eval itself, which BEIR uses for recall and nDCG."""
    pytrec_eval = pytest.importorskip("pytrec_eval")
    ours = evaluate_run(RUN, QRELS, ks=[1, 5, 10, 20, 100])
    evaluator = pytrec_eval.RelevanceEvaluator(QRELS, {"recall.1,5,10,100", "ndcg_cut.10", "recip_rank"})
    per_query = evaluator.evaluate(RUN)
    for ours_name, theirs_name in [
        ("recall@1", "recall_1"),
        ("recall@5", "recall_5"),
        ("recall@10", "recall_10"),
        ("recall@100", "recall_100"),
        ("ndcg@10", "ndcg_cut_10"),
        # Every first hit of this fixture is within rank 10, so trec_eval's uncut reciprocal rank is MRR@10.
        ("mrr@10", "recip_rank"),
    ]:
        theirs = np.mean([per_query[q][theirs_name] for q in QRELS])
        assert ours[ours_name] == pytest.approx(theirs, abs=1e-9), ours_name


def test_metrics_by_hand():
    metrics = evaluate_run(RUN, QRELS, ks=[1, 5])
    # recall@1: q1 finds d4 (1 of 2); others find nothing at rank 1 except q4 (d5, 1 of 3).
    assert metrics["recall@1"] == pytest.approx((1 / 2 + 0 + 0 + 1 / 3) / 4)
    # MRR@10: q1 rank 1, q2 rank 6, q3 none, q4 rank 1.
    assert metrics["mrr@10"] == pytest.approx((1 + 1 / 6 + 0 + 1) / 4)
    # nDCG@10 of q1: gains [2, 0, 1] against ideal [2, 1] (linear gain, log2 discount).
    q1 = (2 + 1 / math.log2(4)) / (2 + 1 / math.log2(3))
    q2 = (1 / math.log2(7)) / 1
    q4 = (1 + 3 / math.log2(4)) / (3 + 1 / math.log2(3) + 1 / math.log2(4))
    assert metrics["ndcg@10"] == pytest.approx((q1 + q2 + 0 + q4) / 4)


def test_recall_curve_ends_at_recall_at_depth():
    curve = recall_curve(RUN, QRELS, max_k=10)
    assert len(curve) == 10
    assert np.all(np.diff(curve) >= 0)
    assert curve[-1] == pytest.approx(evaluate_run(RUN, QRELS, ks=[10])["recall@10"])


def test_trec_run_round_trip(tmp_path):
    doc_ids = [f"d{i}" for i in range(5)]
    run = run_from_search(["a", "b"], doc_ids, np.array([[4, 2], [0, 1]]), np.array([[0.9, 0.5], [0.8, 0.7]]))
    path = write_trec_run(run, tmp_path / "run.trec", tag="test")
    assert path.read_text().splitlines()[0] == "a Q0 d4 1 0.900000 test"
    assert read_trec_run(path) == run
