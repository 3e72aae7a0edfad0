"""Building FAISS indexes: exact flat search, approximate indexes held to a recall floor, input checks."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from denseflow.model.index.build import (
    IndexSpec,
    RecallTooLowError,
    build_index,
    check_embeddings,
    check_recall,
    search,
)
from tests.vectors import unit_rows


def test_flat_search_equals_numpy_exact() -> None:
    docs, queries = unit_rows(300, 24, 1), unit_rows(20, 24, 2)
    index = build_index(docs, IndexSpec("flat"))
    scores, rows = search(index, queries, 10)
    exact = np.argsort(-(queries @ docs.T), axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(rows, exact)
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ docs.T, exact, axis=1), rtol=1e-5)


@pytest.mark.parametrize("spec", [IndexSpec("hnsw", hnsw_m=16, hnsw_ef_search=64), IndexSpec("ivf", ivf_nprobe=8)])
def test_approximate_indexes_reach_high_recall(spec: IndexSpec) -> None:
    docs = unit_rows(2000, 32, 3)
    index = build_index(docs, spec)
    assert index.ntotal == 2000
    recall = check_recall(index, docs, spec, floor=0.9, queries=unit_rows(50, 32, 4))
    assert recall >= 0.9


def test_recall_floor_stops_a_poor_index() -> None:
    docs = unit_rows(2000, 32, 5, clusters=200)
    spec = IndexSpec("ivf", ivf_nlist=64, ivf_nprobe=1)
    index = build_index(docs, spec)
    with pytest.raises(RecallTooLowError, match="below the floor 0.9900") as caught:
        check_recall(index, docs, spec, floor=0.99, queries=unit_rows(50, 32, 6, clusters=200))
    assert caught.value.recall < 0.99


def test_check_embeddings_refuses_bad_rows() -> None:
    with pytest.raises(ValueError, match="not L2-normalised"):
        check_embeddings(np.full((3, 4), 2.0, dtype=np.float32))
    bad = unit_rows(3, 4)
    bad[1, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        check_embeddings(bad)
    with pytest.raises(ValueError, match="non-empty"):
        check_embeddings(np.zeros((0, 4), dtype=np.float32))


def test_a_factory_index_is_held_to_the_recall_floor_and_gets_its_search_params() -> None:
    """index.factory used to leave type 'flat': no recall floor, and no nprobe/efSearch applied or recorded."""
    docs = unit_rows(2000, 32, 5, clusters=200)
    queries = unit_rows(50, 32, 6, clusters=200)
    poor = IndexSpec(factory="IVF64,Flat", ivf_nprobe=1)
    assert poor.approximate
    assert poor.search_params() == {"nprobe": 1}
    index = build_index(docs, poor)
    assert faiss.extract_index_ivf(index).nprobe == 1
    with pytest.raises(RecallTooLowError, match="'IVF64,Flat' index"):
        check_recall(index, docs, poor, floor=0.99, queries=queries)

    thorough = IndexSpec(factory="IVF64,Flat", ivf_nprobe=64)
    assert check_recall(build_index(docs, thorough), docs, thorough, floor=0.99, queries=queries) == 1.0
    assert IndexSpec(factory="HNSW16,Flat", hnsw_ef_search=48).search_params() == {"efSearch": 48}
    assert not IndexSpec(factory="Flat").approximate
