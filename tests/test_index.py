from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from denseflow.model.index import store as idx
from denseflow.model.index.store import (
    ChecksumError,
    IndexSpec,
    NoPublishedIndexError,
    RecallTooLowError,
    build_index,
    check_embeddings,
    check_recall,
    list_versions,
    load_current,
    load_version,
    publish,
    read_pointer,
    rollback,
)


def unit_rows(n: int, dim: int, seed: int = 0, clusters: int = 20) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    points = centres[rng.integers(0, clusters, n)] + 0.5 * rng.normal(size=(n, dim))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "fake-model"
    (folder / "sub").mkdir(parents=True)
    (folder / "modules.json").write_text("[]")
    (folder / "sub" / "weights.bin").write_bytes(b"\x00\x01" * 100)
    return folder


def publish_one(root: Path, model_dir: Path, seed: int, n: int = 50, keep: int = 3, spec: IndexSpec | None = None):
    embeddings = unit_rows(n, 16, seed)
    spec = spec or IndexSpec()
    index = build_index(embeddings, spec)
    manifest = idx.build_manifest(spec, n, 16, {"name": "retriever", "version": str(seed)}, f"fp{seed}", 0.1, 1.0, 5)
    return publish(root, "test", index, [f"d{seed}-{i}" for i in range(n)], model_dir, manifest, keep=keep)


def test_flat_search_equals_numpy_exact() -> None:
    docs, queries = unit_rows(300, 24, 1), unit_rows(20, 24, 2)
    index = build_index(docs, IndexSpec("flat"))
    scores, rows = idx.search(index, queries, 10)
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


def test_publish_round_trip_with_manifest(tmp_path: Path, model_dir: Path) -> None:
    info = publish_one(tmp_path, model_dir, seed=1, spec=IndexSpec("hnsw", hnsw_m=8, hnsw_ef_search=40))
    assert info.version == "v0001" and read_pointer(tmp_path, "test") == "v0001"
    loaded = load_current(tmp_path, "test")
    manifest = loaded.manifest
    assert manifest["count"] == 50 and manifest["dimension"] == 16 and manifest["metric"] == "inner_product"
    assert manifest["model"]["name"] == "retriever" and manifest["corpus_fingerprint"] == "fp1"
    assert manifest["index"]["search_params"] == {"efSearch": 40}
    assert loaded.index.hnsw.efSearch == 40
    assert set(manifest["files"]) == {"index.faiss", "doc_ids.json", "model/modules.json", "model/sub/weights.bin"}
    assert manifest["model"]["checksum"] == idx.model_folder_checksum(model_dir)
    assert loaded.doc_ids[0] == "d1-0"
    assert not list(tmp_path.joinpath("test").glob(".staging-*"))


def test_crash_before_pointer_swap_leaves_current_loadable(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish_one(tmp_path, model_dir, seed=1)

    def crash(*_: object, **__: object) -> None:
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(idx, "_move_pointer", crash)
    with pytest.raises(KeyboardInterrupt):
        publish_one(tmp_path, model_dir, seed=2)
    assert read_pointer(tmp_path, "test") == "v0001"
    loaded = load_current(tmp_path, "test")
    assert loaded.version == "v0001" and loaded.doc_ids[0] == "d1-0"

    # A crash while staging leaves no version folder behind at all.
    monkeypatch.undo()
    monkeypatch.setattr(idx.shutil, "copytree", crash)
    with pytest.raises(KeyboardInterrupt):
        publish_one(tmp_path, model_dir, seed=3)
    assert read_pointer(tmp_path, "test") == "v0001"
    assert [v.version for v in list_versions(tmp_path, "test")] == ["v0001", "v0002"]
    assert not list(tmp_path.joinpath("test").glob(".staging-*"))
    monkeypatch.undo()

    # The next publication skips the orphan's number and moves the pointer normally.
    assert publish_one(tmp_path, model_dir, seed=4).version == "v0003"
    assert load_current(tmp_path, "test").doc_ids[0] == "d4-0"


def test_checksum_mismatch_is_refused(tmp_path: Path, model_dir: Path) -> None:
    info = publish_one(tmp_path, model_dir, seed=1)
    doc_ids = info.path / "doc_ids.json"
    ids = json.loads(doc_ids.read_text())
    doc_ids.write_text(json.dumps(list(reversed(ids))))
    with pytest.raises(ChecksumError, match="doc_ids.json: sha256 differs"):
        load_current(tmp_path, "test")
    (info.path / "model" / "extra.bin").write_bytes(b"x")
    with pytest.raises(ChecksumError, match="model/extra.bin: not in the manifest"):
        load_version(info.path)


def test_rollback_and_keep_last_n(tmp_path: Path, model_dir: Path) -> None:
    for seed in range(1, 5):
        publish_one(tmp_path, model_dir, seed=seed, keep=3)
    assert [v.version for v in list_versions(tmp_path, "test")] == ["v0002", "v0003", "v0004"]
    assert rollback(tmp_path, "test").version == "v0003"
    assert load_current(tmp_path, "test").doc_ids[0] == "d3-0"
    assert rollback(tmp_path, "test").version == "v0002"
    with pytest.raises(NoPublishedIndexError, match="no version older than v0002"):
        rollback(tmp_path, "test")
    assert rollback(tmp_path, "test", to="v0004").version == "v0004"
    with pytest.raises(NoPublishedIndexError, match="'v0001' not found"):
        rollback(tmp_path, "test", to="v0001")
    history = [json.loads(line) for line in (tmp_path / "test" / "history.jsonl").read_text().splitlines()]
    assert [h["action"] for h in history][-3:] == ["rollback", "rollback", "rollback"]

    # Current survives pruning even when it is the oldest; a tampered rollback target is refused.
    rollback(tmp_path, "test", to="v0002")
    publish_one(tmp_path, model_dir, seed=5, keep=1)
    assert [v.version for v in list_versions(tmp_path, "test")] == ["v0005"]
    publish_one(tmp_path, model_dir, seed=6, keep=2)
    (tmp_path / "test" / "v0005" / "index.faiss").write_bytes(b"broken")
    with pytest.raises(ChecksumError):
        rollback(tmp_path, "test")
    assert read_pointer(tmp_path, "test") == "v0006"


def test_nothing_published(tmp_path: Path) -> None:
    with pytest.raises(NoPublishedIndexError, match="nothing published"):
        load_current(tmp_path, "none")
    assert list_versions(tmp_path, "none") == []
    with pytest.raises(ValueError, match="index name"):
        load_current(tmp_path, "../escape")
