"""The index manifest as a typed record: what publication writes reads back the same, older manifests load with
the behaviour they had, and a format this denseflow does not know is refused by name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from denseflow.model.index.bm25 import BM25Index, BM25Settings
from denseflow.model.index.build import IndexSpec, PublishedIndexError, build_index
from denseflow.model.index.manifest import (
    DENSE_ONLY,
    KNOWN_FORMAT_VERSIONS,
    BM25Section,
    Manifest,
    ManifestDraft,
    ManifestError,
    ModelRef,
)
from denseflow.model.index.store import ChecksumError, build_manifest, load_current, publish, read_manifest
from denseflow.model.served_system import ServedSystem
from tests.vectors import unit_rows

SHA = "ab" * 32


def as_published() -> dict[str, Any]:
    """A manifest with every section, shaped as publication writes it from a registered model version."""
    served = ServedSystem("hybrid", "convex", 0.5, BM25Settings(), 128, 256)
    return {
        "bm25": {
            "folder": "bm25",
            **BM25Settings().describe(),
            "documents": 3,
            "library": "bm25s 0.3.16",
            "method": "atire",
            "idf_method": "robertson",
        },  # fmt: skip
        "build_seconds": 0.014,
        "corpus": {"path": "/data/scifact", "rejected_rows": 0},
        "corpus_fingerprint": "99eaba0df57d8812",
        "count": 3,
        "created_at": "2026-12-07T02:38:46.563222+00:00",
        "dimension": 4,
        "documents": {"count": 3, "file": "docs.sqlite"},
        "encode": {
            "batch_size": 64,
            "documents_encoded": 0,
            "documents_reused": 3,
            "fallback": None,
            "mean_cosine": 0.99998,
            "min_cosine": 0.99997,
            "neighbour_recall": 0.998,
            "precision": "bf16",
            "requested": "auto",
            "sample_docs": 128,
        },  # fmt: skip
        "files": {"index.faiss": SHA, "doc_ids.json": SHA, "model/modules.json": SHA},
        "format_version": 1,
        "index": {
            "build_params": {"hnsw_ef_construction": 200},
            "factory": "HNSW32",
            "search_params": {"efSearch": 64},
            "type": "hnsw",
        },  # fmt: skip
        "metric": "inner_product",
        "model": {
            "checksum": SHA,
            "max_seq_length": 256,
            "name": "retriever",
            "query_max_seq_length": 128,
            "run_id": "30624bec",
            "tower_type": "asymmetric",
            "version": "1",
        },  # fmt: skip
        "name": "default",
        "normalized": True,
        "query_tower": {"folder": "query_tower"},
        "search": {"hybrid": {"depth": 100, "method": "convex", "weight": 0.5}, "mode": "hybrid"},
        "served_system": served.as_dict(),
        "verification": {"queries": 200, "recall_at_10": 0.99},
        "version": "v0001",
    }


def test_a_manifest_as_publication_writes_it_reads_back_to_the_same_json() -> None:
    data = as_published()
    manifest = Manifest.from_dict(data, "manifest.json")
    assert manifest.to_dict() == data


def test_the_typed_fields_are_the_written_values() -> None:
    manifest = Manifest.from_dict(as_published())
    assert manifest.model.label == "retriever@1"
    assert manifest.model.query_length == 128
    assert manifest.precision == "bf16"
    assert manifest.served_search.hybrid.weight == 0.5
    assert manifest.index.search_params == {"efSearch": 64}
    assert manifest.bm25 is not None and manifest.bm25.settings() == BM25Settings()
    assert manifest.served_system == ServedSystem("hybrid", "convex", 0.5, BM25Settings(), 128, 256)


def test_the_json_keys_still_read_as_written() -> None:
    manifest = Manifest.from_dict(as_published())
    assert manifest["encode"]["precision"] == "bf16"
    assert manifest["model"]["run_id"] == "30624bec"


def test_a_published_version_reads_back_to_its_file(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "modules.json").write_text("[]")
    doc_ids = ["a", "b", "c"]
    bm25_dir = tmp_path / "bm25-build"
    BM25Index.from_texts(doc_ids, ["brain cells", "heart rate", "gene expression"]).save(bm25_dir)
    spec = IndexSpec()
    draft = build_manifest(spec, 3, 8, {"name": "retriever", "version": "2"}, "fp", 0.1, 1.0, 3)
    publish(
        tmp_path / "indexes",
        "tiny",
        build_index(unit_rows(3, 8, 0), spec),
        doc_ids,
        model_dir,
        draft,
        bm25_dir=bm25_dir,
    )
    written = json.loads((tmp_path / "indexes" / "tiny" / "v0001" / "manifest.json").read_text())
    loaded = load_current(tmp_path / "indexes", "tiny").manifest
    assert loaded.to_dict() == written
    # Every key the BM25 folder records reaches the manifest's section.
    meta = json.loads((bm25_dir / "denseflow.json").read_text())
    assert written["bm25"] == {"folder": "bm25", **meta}


def test_a_draft_reads_back_from_its_json() -> None:
    draft = build_manifest(IndexSpec(), 3, 8, {"name": "retriever"}, "fp", 0.1234, None, 0)
    assert ManifestDraft.from_dict(json.loads(json.dumps(draft.to_dict()))) == draft


def test_build_manifest_refuses_a_section_a_manifest_does_not_have() -> None:
    with pytest.raises(ValueError, match="no manifest section bm25"):
        build_manifest(IndexSpec(), 3, 8, {"name": "retriever"}, "fp", 0.0, 1.0, 0, extra={"bm25": {"k1": 1.0}})


def older_manifest() -> dict[str, Any]:
    """A manifest from before the format version, search modes, the query tower, stored documents, the encode and
    served-system records, the BM25 analyzer's name and the query length were written."""
    return {
        "bm25": {"k1": 1.5, "b": 0.75, "documents": 3},
        "build_seconds": 0.5,
        "corpus_fingerprint": "fp",
        "count": 3,
        "created_at": "2025-01-01T00:00:00+00:00",
        "dimension": 4,
        "files": {"index.faiss": SHA},
        "index": {"build_params": {}, "factory": "Flat", "search_params": {}, "type": "flat"},
        "metric": "inner_product",
        "model": {"checksum": SHA, "max_seq_length": 128, "name": "retriever", "version": "1"},
        "name": "default",
        "normalized": True,
        "verification": {"queries": 0, "recall_at_10": None},
        "version": "v0001",
    }


def test_an_older_manifest_without_the_newer_fields_loads() -> None:
    manifest = Manifest.from_dict(older_manifest(), "old/manifest.json")
    assert manifest.format_version == 1
    assert manifest.version == "v0001"
    assert manifest.count == 3


def test_an_older_manifest_keeps_the_behaviour_it_had() -> None:
    manifest = Manifest.from_dict(older_manifest())
    assert manifest.served_search == DENSE_ONLY  # no search section: dense only
    assert manifest.precision is None  # no encode record: queries in fp32
    assert manifest.model.query_length == 128  # queries at the documents' length
    assert manifest.query_tower is None  # queries embedded with the model
    assert manifest.documents is None  # answers with ids only
    assert manifest.served_system is None
    assert manifest.bm25 is not None and manifest.bm25.folder == "bm25"
    assert manifest.bm25.settings() is None  # the BM25 folder's own record decides the analyzer


def test_empty_sections_read_as_absent_as_they_always_did() -> None:
    data = older_manifest() | {"search": {}, "query_tower": {}, "documents": {}}
    manifest = Manifest.from_dict(data)
    assert (manifest.search, manifest.query_tower, manifest.documents) == (None, None, None)


def test_an_unknown_format_version_names_the_file_and_the_versions() -> None:
    data = as_published() | {"format_version": 7}
    with pytest.raises(ManifestError) as raised:
        Manifest.from_dict(data, "indexes/default/v0009/manifest.json")
    message = str(raised.value)
    assert "indexes/default/v0009/manifest.json" in message
    assert "format_version 7" in message
    assert f"({', '.join(map(str, KNOWN_FORMAT_VERSIONS))})" in message


def test_an_unknown_format_version_is_a_value_error_and_a_published_index_error(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(as_published() | {"format_version": 2}))
    with pytest.raises(ValueError, match="format_version 2"):
        read_manifest(tmp_path)
    with pytest.raises(PublishedIndexError, match=str(path)):
        read_manifest(tmp_path)


def test_a_manifest_without_its_version_count_or_dimension_is_refused() -> None:
    data = {key: value for key, value in as_published().items() if key != "count"}
    with pytest.raises(ManifestError, match="manifest.json: manifest has no count"):
        Manifest.from_dict(data, "manifest.json")


def test_a_section_of_the_wrong_shape_is_refused_by_name() -> None:
    with pytest.raises(ManifestError, match="manifest.json: model: not a JSON object"):
        Manifest.from_dict(as_published() | {"model": ["retriever"]}, "manifest.json")


def test_a_manifest_that_is_not_json_is_a_damaged_file_named_by_path(tmp_path: Path) -> None:
    # A damaged file like any other: a replica downloads the version again.
    (tmp_path / "manifest.json").write_text("{cut short")
    with pytest.raises(ChecksumError, match="manifest.json: manifest is not valid JSON"):
        read_manifest(tmp_path)


def test_a_served_system_record_this_denseflow_cannot_read_does_not_stop_the_version_loading() -> None:
    data = as_published() | {"served_system": {"schema": 99, "mode": "hybrid"}}
    manifest = Manifest.from_dict(data, "manifest.json")
    assert manifest.served_system is None
    assert manifest.served_search.mode == as_published()["search"]["mode"]


def test_a_model_from_a_bare_folder_is_labelled_by_name() -> None:
    assert ModelRef(name="fake-model").label == "fake-model"
    assert ModelRef().label is None


def test_the_bm25_section_holds_every_key_its_folder_records(tmp_path: Path) -> None:
    BM25Index.from_texts(["a"], ["brain"]).save(tmp_path)
    meta = json.loads((tmp_path / "denseflow.json").read_text())
    assert BM25Section(**meta).settings() == BM25Settings()
