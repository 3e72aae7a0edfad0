"""The versioned index store: publish, manifest and checksums, crash safety, rollback and pruning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from denseflow.model.checksums import model_fingerprint
from denseflow.model.index import store as idx
from denseflow.model.index.build import (
    IndexSpec,
    build_index,
)
from denseflow.model.index.store import (
    ChecksumError,
    NoPublishedIndexError,
    build_manifest,
    list_versions,
    load_current,
    load_version,
    publish,
    read_pointer,
    rollback,
)
from tests.vectors import unit_rows


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
    manifest = build_manifest(spec, n, 16, {"name": "retriever", "version": str(seed)}, f"fp{seed}", 0.1, 1.0, 5)
    return publish(root, "test", index, [f"d{seed}-{i}" for i in range(n)], model_dir, manifest, keep=keep)


def test_publish_round_trip_with_manifest(tmp_path: Path, model_dir: Path) -> None:
    info = publish_one(tmp_path, model_dir, seed=1, spec=IndexSpec("hnsw", hnsw_m=8, hnsw_ef_search=40))
    assert info.version == "v0001"
    assert read_pointer(tmp_path, "test") == "v0001"
    loaded = load_current(tmp_path, "test")
    manifest = loaded.manifest
    assert manifest["count"] == 50
    assert manifest["dimension"] == 16
    assert manifest["metric"] == "inner_product"
    assert manifest["model"]["name"] == "retriever"
    assert manifest["corpus_fingerprint"] == "fp1"
    assert manifest["index"]["search_params"] == {"efSearch": 40}
    assert loaded.index.hnsw.efSearch == 40
    assert set(manifest["files"]) == {"index.faiss", "doc_ids.json", "model/modules.json", "model/sub/weights.bin"}
    assert manifest["model"]["checksum"] == model_fingerprint(model_dir)
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
    assert loaded.version == "v0001"
    assert loaded.doc_ids[0] == "d1-0"

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


def test_a_version_whose_manifest_does_not_parse_is_listed_as_broken(
    tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`index list` used to hide it: the damage went unseen while its number stayed taken."""
    from denseflow.cli.main import main

    for seed in (1, 2, 3):
        publish_one(tmp_path / "indexes", model_dir, seed=seed)
    (tmp_path / "indexes" / "test" / "v0002" / "manifest.json").write_text("{cut short")
    versions = list_versions(tmp_path / "indexes", "test")
    assert [(v.version, v.broken is not None) for v in versions] == [
        ("v0001", False),
        ("v0002", True),
        ("v0003", False),
    ]
    assert "manifest is not valid JSON" in str(versions[1].broken)
    # A broken version is never a rollback target: the default skips it, naming it is refused.
    assert rollback(tmp_path / "indexes", "test").version == "v0001"
    with pytest.raises(NoPublishedIndexError, match="'v0002' not found"):
        rollback(tmp_path / "indexes", "test", to="v0002")

    assert main(["index", "list", "--workspace", str(tmp_path), "--name", "test"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines if "v0002" in line] == [["v0002", "BROKEN"]]
    assert main(["index", "list", "--workspace", str(tmp_path), "--name", "test", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [v["version"] for v in listed if v["broken"]] == ["v0002"]


def test_history_is_written_before_the_pointer_so_a_crash_between_loses_no_line(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash after the pointer moved used to lose the move's history line; now the line comes first, and a
    move that never landed is followed by an ``external`` line, so the history replays to ``current``."""
    publish_one(tmp_path, model_dir, seed=1)

    def crash(*_: object, **__: object) -> None:
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(idx, "_move_pointer", crash)
    with pytest.raises(KeyboardInterrupt):
        publish_one(tmp_path, model_dir, seed=2)
    monkeypatch.undo()
    assert read_pointer(tmp_path, "test") == "v0001"
    assert [(h["action"], h["from"], h["to"]) for h in idx.read_history(tmp_path, "test")] == [
        ("publish", None, "v0001"),
        ("publish", "v0001", "v0002"),
    ]
    publish_one(tmp_path, model_dir, seed=3)
    (tmp_path / "test" / "current").write_text("v0002\n")  # a person points current by hand
    rollback(tmp_path, "test", to="v0003")
    moves = [(h["action"], h["from"], h["to"]) for h in idx.read_history(tmp_path, "test")]
    assert moves[2:] == [
        ("external", "v0002", "v0001"),
        ("publish", "v0001", "v0003"),
        ("external", "v0003", "v0002"),
        ("rollback", "v0002", "v0003"),
    ]
    assert moves[-1][2] == read_pointer(tmp_path, "test")
