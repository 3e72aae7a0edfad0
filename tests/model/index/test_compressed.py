"""Compressed index types (IVF-PQ, HNSW over 8-bit scalar codes): built by factory, searched with their
parameters, and held to the recall floor like every approximate index."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from denseflow.model.config import IndexConfig
from denseflow.model.index.build import RecallTooLowError, build_index, check_recall


def unit_rows(count: int, dimension: int, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((count, dimension)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.mark.parametrize(
    ("kind", "factory", "params"),
    [("ivfpq", "IVF50,PQ8x5", {"nprobe": 7}), ("hnsw_sq", "HNSW16,SQ8", {"efSearch": 40})],
)
def test_compressed_types_build_with_their_search_params(kind: str, factory: str, params: dict) -> None:
    config = IndexConfig(type=kind, ivf_nlist=50, ivf_nprobe=7, pq_m=8, hnsw_m=16, hnsw_ef_search=40)
    spec = config.spec()
    embeddings = unit_rows(2000, 64)
    assert spec.factory_string(len(embeddings), 64) == factory and spec.search_params() == params
    index = build_index(embeddings, spec)
    assert index.ntotal == 2000
    if kind == "ivfpq":
        assert faiss.extract_index_ivf(index).nprobe == 7
        # 8 codes of 5 bits (2,000 points train 2^5 centroids, not 2^8): 5 bytes a vector instead of 64 × 4.
        assert faiss.extract_index_ivf(index).code_size == 5
    else:
        assert index.hnsw.efSearch == 40
    assert 0 < check_recall(index, embeddings, spec, floor=0.0) <= 1.0


def test_recall_floor_refuses_a_lossy_ivfpq_index() -> None:
    spec = IndexConfig(type="ivfpq", ivf_nlist=20, ivf_nprobe=1, pq_m=2).spec()
    embeddings = unit_rows(1000, 32, seed=1)
    index = build_index(embeddings, spec)
    with pytest.raises(RecallTooLowError, match="PQ2"):
        check_recall(index, embeddings, spec, floor=0.99)


def test_pq_m_must_divide_the_dimension() -> None:
    with pytest.raises(ValueError, match="does not divide"):
        build_index(unit_rows(500, 30), IndexConfig(type="ivfpq", pq_m=8).spec())
