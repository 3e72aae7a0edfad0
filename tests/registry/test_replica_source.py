"""The registry as a replica reads it (registry/replica_source.py), on a local MLflow store: publication's own
``log_index_artifact`` logs a version, a replica pulls it, verifies it, serves it, and follows the alias."""

from __future__ import annotations

import socket
from pathlib import Path
from types import SimpleNamespace

import pytest

from denseflow.model.index.store import ChecksumError
from denseflow.model.serving.replica import (
    RegistryReferenceError,
    RegistryUnavailable,
    Replica,
    ReplicaCache,
)
from denseflow.model.serving.search import Searcher
from denseflow.registry.replica_source import MlflowVersionSource, redacted
from tests.model.serving.conftest import publish_model_version

NAME = "retriever"
INDEX = "tiny"


@pytest.fixture(scope="module")
def published(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Index folders for versions 1 and 2 (with the query tower) and 3 (without: its model comes from the registry)."""
    from denseflow.model.encoder import load_encoder
    from denseflow.model.onnx_runtime import export_query_tower
    from tests.conftest import write_tiny_beir

    root = tmp_path_factory.mktemp("registry-published")
    beir = write_tiny_beir(root / "beir")
    tower = root / "tower"
    assert export_query_tower(load_encoder(tiny_model_dir), tower, 64) is None
    return {
        "1": publish_model_version(root / "indexes", tiny_model_dir, beir, "1", tower),
        "2": publish_model_version(root / "indexes", tiny_model_dir, beir, "2", tower, documents=30),
        "3": publish_model_version(root / "indexes", tiny_model_dir, beir, "3", None),
    }


def register(sqlite_registry: SimpleNamespace, model_dir: Path, folder: Path | None) -> str:
    """A model version of ``retriever`` (its files: ``model_dir``), with ``folder`` logged as publication logs it;
    ``folder``'s manifest must name the version this registers."""
    from denseflow.model.config import PublishConfig, TrackingConfig
    from denseflow.model.index.built import ModelToPublish
    from denseflow.tasks.publish import PublishedVersion, log_index_artifact

    client = sqlite_registry.client
    run_id = client.create_run(sqlite_registry.experiment).info.run_id
    if not client.search_registered_models(f"name = '{NAME}'"):
        client.create_registered_model(NAME)
    version = str(client.create_model_version(NAME, source=model_dir.as_uri(), run_id=run_id).version)
    if folder is not None:
        config = PublishConfig(
            workspace=sqlite_registry.workspace,
            tracking=TrackingConfig(tracking_uri=sqlite_registry.uri, experiment="test"),
        )
        log_index_artifact.fn(
            PublishedVersion(INDEX, folder.name, str(folder), 0),
            ModelToPublish(NAME, version, run_id, str(model_dir)),
            SimpleNamespace(to_encode=0, reused=0),
            config,
        )
    return version


def replica(tmp_path: Path, reference: str = f"{NAME}@production", keep: int = 2) -> Replica:
    source = MlflowVersionSource(reference, INDEX)
    return Replica(source, ReplicaCache(tmp_path / "cache", source.model), keep=keep)


def test_a_replica_serves_production_as_published_and_follows_the_alias(
    sqlite_registry: SimpleNamespace, published: dict[str, Path], tiny_model_dir: Path, tmp_path: Path
) -> None:
    one = register(sqlite_registry, tiny_model_dir, published["1"])
    sqlite_registry.client.set_registered_model_alias(NAME, "production", one)
    with replica(tmp_path) as served:
        searcher = served.start()
        local = Searcher.for_folder(published["1"], INDEX)  # what the publishing machine serves
        for query in ("cancer tumor", "brain memory", "bone fracture calcium"):
            remote, there = searcher.search(query, 10), local.search(query, 10)
            assert [(hit.doc_id, hit.score) for hit in remote.hits] == [(hit.doc_id, hit.score) for hit in there.hits]
        assert (tmp_path / "cache" / NAME / one / "indexes" / INDEX / "v0001" / "docs.sqlite").is_file()

        two = register(sqlite_registry, tiny_model_dir, published["2"])
        assert served.poll_once() is False  # a new version alone moves nothing
        sqlite_registry.client.set_registered_model_alias(NAME, "production", two)
        assert served.poll_once() is True
        assert searcher.search("cancer tumor", 36).index_version == "v0002"
        assert len(searcher.search("cancer tumor", 36).hits) == 30
        health = served.health()
        assert (health["served_version"], health["alias_version"], health["stale"]) == (two, two, False)


def test_a_version_without_a_query_tower_brings_its_model_from_the_registry(
    sqlite_registry: SimpleNamespace, published: dict[str, Path], tiny_model_dir: Path, tmp_path: Path
) -> None:
    for _ in range(2):  # the index names model version 3
        register(sqlite_registry, tiny_model_dir, None)
    version = register(sqlite_registry, tiny_model_dir, published["3"])
    with replica(tmp_path, f"{NAME}/{version}") as served:
        result = served.start().search("virus immune", 5)
    assert result.index_version == "v0003" and len(result.hits) == 5
    assert (tmp_path / "cache" / NAME / version / "indexes" / INDEX / "v0003" / "model" / "modules.json").is_file()


def test_a_file_tampered_in_the_artifact_store_is_refused_by_name(
    sqlite_registry: SimpleNamespace, published: dict[str, Path], tiny_model_dir: Path, tmp_path: Path
) -> None:
    version = register(sqlite_registry, tiny_model_dir, published["1"])
    sqlite_registry.client.set_registered_model_alias(NAME, "production", version)
    from mlflow.utils.file_utils import local_file_uri_to_path

    run = sqlite_registry.client.get_model_version(NAME, version).run_id
    artifacts = Path(local_file_uri_to_path(sqlite_registry.client.get_run(run).info.artifact_uri))
    stored = artifacts / "indexes" / INDEX / "v0001" / "doc_ids.json"
    stored.write_text(stored.read_text().replace("cancer-d0", "cancer-dX"))
    with pytest.raises(ChecksumError, match=r"doc_ids\.json: sha256 differs"):
        replica(tmp_path).start()
    assert ReplicaCache(tmp_path / "cache", NAME).cached() == {}


def test_a_missing_alias_is_named_and_a_version_without_an_index_says_so(
    sqlite_registry: SimpleNamespace, tiny_model_dir: Path
) -> None:
    version = register(sqlite_registry, tiny_model_dir, None)
    with pytest.raises(RegistryReferenceError, match=f"{NAME}@production: no such alias"):
        MlflowVersionSource(f"{NAME}@production", INDEX).resolve()
    sqlite_registry.client.set_registered_model_alias(NAME, "production", version)
    found = MlflowVersionSource(f"{NAME}@production", INDEX).resolve()
    assert (found.version, found.index_version) == (version, None)


def test_a_tracking_server_that_does_not_answer_is_unavailable_and_its_credentials_stay_hidden(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    uri = f"http://reader:hunter2secret@127.0.0.1:{port}"
    source = MlflowVersionSource(f"{NAME}@production", INDEX, client=MlflowClient(uri, uri))
    with pytest.raises(RegistryUnavailable, match="did not answer") as raised:
        source.resolve()
    assert "hunter2secret" not in str(raised.value)
    assert redacted(uri) == f"http://***@127.0.0.1:{port}"


def test_a_model_the_reader_may_not_read_is_a_reference_error_not_an_outage() -> None:
    """MLflow's basic-auth app answers a user who is not an admin 403, not 404, for a registered model that does not
    exist: the server answered, so the replica must not call it unreachable (nor report itself stale)."""
    from mlflow.exceptions import MlflowException, get_error_code

    class Refusing:
        def get_model_version_by_alias(self, name: str, alias: str) -> None:
            # What MLflow's REST client raises for the app's plain-text 403.
            raise MlflowException(
                "API request to endpoint /api/2.0/mlflow/registered-models/alias failed with error code 403 != 200. "
                "Response body: 'Permission denied'",
                error_code=get_error_code(403),
            )

    source = MlflowVersionSource(f"{NAME}@production", INDEX, client=Refusing())
    with pytest.raises(
        RegistryReferenceError, match=rf"refused to read it \(permission denied\): no registered model {NAME}"
    ):
        source.resolve()
