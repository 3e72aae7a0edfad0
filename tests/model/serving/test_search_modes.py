"""BM25 published with the dense index, and search in dense, bm25 and hybrid modes (issue 12 items 4 and 5)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from denseflow.model.config import IndexConfig, PublishConfig
from denseflow.model.data.beir import RejectLog, find_file, read_corpus, read_queries
from denseflow.model.encoder import encode, load_encoder
from denseflow.model.evaluation.metrics import ranked
from denseflow.model.fusion import fuse_query
from denseflow.model.index.bm25 import BM25Index
from denseflow.model.index.build import IndexSpec, build_index
from denseflow.model.index.store import (
    ChecksumError,
    SearchSettingsError,
    build_manifest,
    load_current,
    publish,
    read_pointer,
    search_settings,
)
from denseflow.model.serving.search import QueryError, Searcher
from denseflow.model.serving.service import create_app


def publish_tiny(
    root: Path, model_dir: Path, beir_dir: Path, search: dict | None = None, with_bm25: bool = True
) -> tuple[list[str], np.ndarray]:
    """Publish a Flat index and (``with_bm25``) a BM25 index of the tiny corpus, as the publish task does."""
    corpus = read_corpus(find_file(beir_dir, "corpus.jsonl"), RejectLog())
    doc_ids = list(corpus)
    texts = [corpus[d].full_text for d in doc_ids]
    embeddings = encode(load_encoder(model_dir), texts, "document")
    spec = IndexSpec()
    identity = {"name": "retriever", "version": model_dir.name, "run_id": None}
    manifest = build_manifest(
        spec, len(doc_ids), embeddings.shape[1], identity, "fp", 0.0, 1.0, 0, extra={"search": search} if search else {}
    )
    bm25_dir = None
    if with_bm25:
        bm25_dir = root.parent / f"bm25-build-{len(list(root.parent.glob('bm25-build-*')))}"
        BM25Index.from_texts(doc_ids, texts).save(bm25_dir)
    publish(root, "tiny", build_index(embeddings, spec), doc_ids, model_dir, manifest, bm25_dir=bm25_dir)
    return doc_ids, embeddings


@pytest.fixture()
def published(tiny_model_dir: Path, tiny_beir_dir: Path, tmp_path: Path) -> Path:
    root = tmp_path / "indexes"
    publish_tiny(root, tiny_model_dir, tiny_beir_dir)
    return root


def tiny_queries(beir_dir: Path) -> list[str]:
    return list(read_queries(find_file(beir_dir, "queries.jsonl"), RejectLog()).values())[:6]


def test_publish_writes_bm25_files_under_the_manifest_checksums(published: Path) -> None:
    loaded = load_current(published, "tiny")
    files = loaded.manifest["files"]
    bm25_files = sorted(rel for rel in files if rel.startswith("bm25/"))
    assert "bm25/denseflow.json" in bm25_files
    assert "bm25/data.csc.index.npy" in bm25_files
    assert "bm25/vocab.index.json" in bm25_files
    assert loaded.manifest["bm25"]["k1"] == 0.9
    assert loaded.manifest["bm25"]["b"] == 0.4
    assert loaded.manifest["search"] == {"mode": "hybrid", "hybrid": {"weight": 0.5, "method": "convex", "depth": 100}}
    assert loaded.bm25 is not None
    assert loaded.bm25.doc_ids == loaded.doc_ids


def test_each_mode_answers_and_hybrid_is_the_evaluation_fusion(
    published: Path, tiny_model_dir: Path, tiny_beir_dir: Path
) -> None:
    searcher = Searcher(published, "tiny", reload_interval_s=0, backend="torch")
    loaded = load_current(published, "tiny")
    bm25 = BM25Index.load(published / "tiny" / "v0001" / "bm25", loaded.doc_ids)
    for query in tiny_queries(tiny_beir_dir):
        dense = searcher.search(query, k=5, mode="dense")
        sparse = searcher.search(query, k=5, mode="bm25")
        hybrid = searcher.search(query, k=5, mode="hybrid")
        assert (dense.mode, sparse.mode, hybrid.mode) == ("dense", "bm25", "hybrid")
        assert [h.doc_id for h in sparse.hits] == [d for d, s in bm25.search(query, 5) if s > 0]
        assert sparse.encode_ms == 0
        dense_all = {h.doc_id: h.score for h in searcher.search(query, k=36, mode="dense").hits}
        bm25_all = {d: s for d, s in bm25.search(query, 36) if s > 0}
        expected = ranked(fuse_query(dense_all, bm25_all, 0.5, "convex"))[:5]
        assert [h.doc_id for h in hybrid.hits] == expected


def test_default_mode_is_the_published_one(tiny_model_dir: Path, tiny_beir_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "indexes"
    publish_tiny(root, tiny_model_dir, tiny_beir_dir, search=search_settings("bm25", 0.3, "rrf"))
    searcher = Searcher(root, "tiny", reload_interval_s=0, backend="torch")
    assert searcher.search("brain neuron", k=3).mode == "bm25"
    assert searcher.health()["search_mode"] == "bm25"
    assert searcher.health()["fusion"] == {"weight": 0.3, "method": "rrf", "depth": 100}
    assert Searcher(root, "tiny", backend="torch", mode="dense").search("brain neuron", k=3).mode == "dense"


def test_version_without_bm25_serves_dense_only(tiny_model_dir: Path, tiny_beir_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "indexes"
    publish_tiny(root, tiny_model_dir, tiny_beir_dir, with_bm25=False)
    searcher = Searcher(root, "tiny", reload_interval_s=0, backend="torch")
    assert searcher.search("brain neuron", k=3).mode == "dense"
    with pytest.raises(QueryError, match="no BM25 index"):
        searcher.search("brain neuron", k=3, mode="hybrid")
    with pytest.raises(SearchSettingsError, match="cannot serve mode 'hybrid'"):
        Searcher(root, "tiny", backend="torch", mode="hybrid")


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_bad_bm25_file_is_refused_by_name_and_previous_version_serves(
    damage: str, published: Path, tiny_model_dir: Path, tiny_beir_dir: Path
) -> None:
    searcher = Searcher(published, "tiny", reload_interval_s=0, backend="torch")
    before = searcher.search("brain neuron", k=3, mode="hybrid")
    # Publish v0002, then damage its BM25 vocabulary before the searcher looks at it.
    publish_tiny(published, tiny_model_dir, tiny_beir_dir)
    target = published / "tiny" / "v0002" / "bm25" / "vocab.index.json"
    if damage == "corrupt":
        target.write_text(json.dumps({"tampered": 0}), encoding="utf-8")
    else:
        target.unlink()
    assert read_pointer(published, "tiny") == "v0002"
    assert searcher.maybe_reload(force=True) is False
    error = searcher.last_error
    assert error is not None and "\n" not in error
    assert "bm25/vocab.index.json" in error
    assert ("sha256 differs" if damage == "corrupt" else "missing") in error
    after = searcher.search("brain neuron", k=3, mode="hybrid")
    assert after.index_version == "v0001"
    assert after.hits == before.hits
    assert searcher.health()["status"] == "degraded"
    with pytest.raises(ChecksumError, match="bm25/vocab.index.json"):
        Searcher(published, "tiny", backend="torch")


def test_search_response_says_which_mode_answered(published: Path) -> None:
    client = TestClient(create_app(Searcher(published, "tiny", reload_interval_s=0, backend="torch")))
    default = client.post("/search", json={"query": "brain neuron", "k": 3})
    assert default.status_code == 200
    assert default.json()["mode"] == "hybrid"
    assert client.post("/search", json={"query": "brain neuron", "k": 3, "mode": "bm25"}).json()["mode"] == "bm25"
    assert client.get("/search", params={"q": "brain neuron", "mode": "dense"}).json()["mode"] == "dense"
    assert client.post("/search", json={"query": "brain", "mode": "sparse"}).status_code == 422


@pytest.mark.parametrize("weight", [-0.1, 1.5])
def test_fusion_weight_outside_unit_interval_is_a_validation_error(weight: float) -> None:
    with pytest.raises(ValidationError, match="fusion_weight"):
        PublishConfig(index=IndexConfig(fusion_weight=weight))
    with pytest.raises(ValidationError, match="fusion_weight"):
        PublishConfig.model_validate({"index": {"fusion_weight": weight}})
    with pytest.raises(SearchSettingsError, match="outside \\[0, 1\\]"):
        search_settings("hybrid", weight, "convex")


def test_registry_tags_set_the_published_search_and_bad_tags_fail() -> None:
    from denseflow.tasks.publish import published_search

    tags = {"served.mode": "dense", "hybrid.weight": "0.7000", "hybrid.method": "rrf"}
    assert published_search(IndexConfig(), tags) == {
        "mode": "dense",
        "hybrid": {"weight": 0.7, "method": "rrf", "depth": 100},
    }
    assert published_search(IndexConfig(search_mode="bm25", fusion_weight=0.2), tags)["mode"] == "bm25"
    assert published_search(IndexConfig(), {})["hybrid"] == {"weight": 0.5, "method": "convex", "depth": 100}
    with pytest.raises(SearchSettingsError, match="outside"):
        published_search(IndexConfig(), {"hybrid.weight": "1.2"})
    with pytest.raises(ValueError, match="not a number"):
        published_search(IndexConfig(), {"hybrid.weight": "high"})


def test_bm25s_ranks_like_okapi_on_the_tiny_corpus(tiny_beir_dir: Path) -> None:
    """bm25s with the project's formula gives rank-bm25's BM25Okapi scores (no term is in half the documents)."""
    rank_bm25 = pytest.importorskip("rank_bm25")
    from denseflow.model.index.bm25 import BM25Settings

    settings = BM25Settings()
    tokenize = settings.tokenize
    corpus = read_corpus(find_file(tiny_beir_dir, "corpus.jsonl"), RejectLog())
    ours = BM25Index(corpus, settings)
    okapi = rank_bm25.BM25Okapi([tokenize(doc.full_text) for doc in corpus.values()], k1=settings.k1, b=settings.b)
    for query in tiny_queries(tiny_beir_dir):
        np.testing.assert_allclose(ours.scores(query), okapi.get_scores(tokenize(query)), rtol=1e-5, atol=1e-5)
