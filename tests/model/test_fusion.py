"""BM25 + dense fusion (model/fusion.py)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from denseflow.model.config import EvalConfig
from denseflow.model.fusion import fuse_query, fuse_runs

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


def test_zscore_fusion_is_not_squashed_by_one_outlying_score():
    dense = {"top": 0.90, "a": 0.50, "b": 0.49}
    bm25 = {"top": 100.0, "b": 9.0, "a": 8.0, **{f"n{i}": 7.0 for i in range(20)}}
    fused = fuse_query(dense, bm25, 0.5, "zscore")
    assert 0 <= min(fused.values()) and max(fused.values()) <= 1
    assert max(fused, key=fused.get) == "top"


def test_an_unknown_fusion_method_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match="zscore"):
        fuse_query(DENSE, BM25, 0.5, "borda")  # type: ignore[arg-type]


def test_a_query_only_one_system_answered_keeps_its_ranking():
    fused = fuse_runs({"q1": {"x": 1.0, "y": 0.5}}, {}, 0.3)
    assert max(fused["q1"], key=fused["q1"].get) == "x"
