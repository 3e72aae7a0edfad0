"""BM25 + dense fusion (model/fusion.py)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from denseflow.model.config import EvalConfig
from denseflow.model.fusion import fuse_query, fuse_runs, tune_weight

DENSE = {"a": 0.9, "b": 0.8, "c": 0.1}
BM25 = {"c": 12.0, "d": 11.0, "a": 2.0}


def test_convex_fusion_normalises_each_system_and_mixes_by_weight():
    fused = fuse_query(DENSE, BM25, 0.5)
    # a: dense 1.0, bm25 0.0 → 0.5; c: dense 0.0, bm25 1.0 → 0.5; d: bm25 0.9 only → 0.45.
    assert fused["a"] == pytest.approx(0.5)
    assert fused["c"] == pytest.approx(0.5)
    assert fused["d"] == pytest.approx(0.45)


def test_weight_one_is_the_dense_ranking_and_zero_the_bm25_ranking():
    dense_only = fuse_query(DENSE, BM25, 1.0)
    bm25_only = fuse_query(DENSE, BM25, 0.0)
    assert max(dense_only, key=dense_only.get) == "a"
    assert max(bm25_only, key=bm25_only.get) == "c"


def test_rrf_rewards_documents_both_systems_return():
    fused = fuse_query(DENSE, BM25, 0.5, method="rrf")
    # a is 1st for dense and 3rd for BM25; d only appears in BM25 (2nd).
    assert fused["a"] > fused["d"]


def test_depth_keeps_the_best_fused_documents():
    fused = fuse_query(DENSE, BM25, 0.5, depth=2)
    assert set(fused) == {"a", "c"}


def test_weight_outside_unit_interval_is_refused():
    with pytest.raises(ValueError, match="outside"):
        fuse_query(DENSE, BM25, 1.5)


def test_config_refuses_a_fusion_weight_outside_unit_interval():
    with pytest.raises(ValidationError):
        EvalConfig(fusion_weight=1.2)


def test_tuning_picks_the_weight_that_finds_the_relevant_documents():
    dense = {"q1": {"x": 0.9, "y": 0.1}, "q2": {"y": 0.9, "x": 0.1}}
    bm25 = {"q1": {"y": 5.0, "x": 1.0}, "q2": {"x": 5.0, "y": 1.0}}
    qrels = {"q1": {"x": 1}, "q2": {"y": 1}}  # dense is right on both queries
    weight, curve = tune_weight(dense, bm25, qrels)
    assert weight > 0.5
    assert curve[1.0] == pytest.approx(1.0)


def test_a_flat_curve_goes_to_the_even_mix():
    dense = {"q1": {"x": 0.9}}
    bm25 = {"q1": {"x": 3.0}}
    weight, _ = tune_weight(dense, bm25, {"q1": {"x": 1}})
    assert weight == 0.5


def test_a_query_only_one_system_answered_keeps_its_ranking():
    fused = fuse_runs({"q1": {"x": 1.0, "y": 0.5}}, {}, 0.3)
    assert max(fused["q1"], key=fused["q1"].get) == "x"
