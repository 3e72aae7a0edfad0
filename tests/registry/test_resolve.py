"""Resolving a version to what it was trained on (registry/resolve.py): ``promote/rollback`` index the
corpus the model was trained on, not the bundled one (issue 11 item 10)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from denseflow.cli.main import main
from denseflow.model.config import DataConfig, TrackingConfig
from denseflow.model.data.ingest import ingest
from denseflow.registry.resolve import trained_dataset_dir
from denseflow.tasks.tracking import configure_tracking

NAME = "retriever"


@pytest.fixture()
def registry(tmp_path: Path, tiny_beir_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """Version 1 registered from a run whose ingested dataset sits in the workspace, tagged like retrain tags it."""
    workspace = tmp_path / "ws"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    configure_tracking(TrackingConfig(tracking_uri=uri, experiment="test"), workspace)
    client = MlflowClient()
    run = client.create_run(client.get_experiment_by_name("test").experiment_id)
    run_id = run.info.run_id
    ingested = ingest(DataConfig(path=tiny_beir_dir), workspace / "runs" / run_id / "data")
    client.set_tag(run_id, "dataset_fingerprint", ingested.fingerprint)
    client.create_registered_model(NAME)
    client.create_model_version(NAME, source=tiny_beir_dir.as_uri(), run_id=run_id)
    yield SimpleNamespace(workspace=workspace, data=ingested.folder, run_id=run_id)
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


def test_the_trained_dataset_is_found_only_when_its_fingerprint_matches(registry) -> None:
    folder, why = trained_dataset_dir(NAME, "1", registry.workspace)
    assert folder == registry.data
    assert "trained on" in why
    with (registry.data / "corpus.jsonl").open("a") as out:
        out.write(json.dumps({"_id": "new", "title": "", "text": "added after training"}) + "\n")
    folder, why = trained_dataset_dir(NAME, "1", registry.workspace)
    assert folder is None
    assert "not the" in why


def test_promote_publish_indexes_the_corpus_the_version_was_trained_on(
    registry, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """It used to index the bundled SciFact whatever the model was trained on."""
    import denseflow.flows.publish_index as publish_flow

    published: list[Any] = []

    def fake_publish(config: Any) -> SimpleNamespace:
        published.append(config)
        figures = {"name": "default", "version": "v0001", "path": "p", "documents": 36, "documents_encoded": 36}
        return SimpleNamespace(summary=lambda: figures)

    monkeypatch.setattr(publish_flow, "run_publish", fake_publish)
    workspace = ["--workspace", str(registry.workspace)]
    assert main(["promote", "1", *workspace]) == 0
    assert published[-1].data.path == registry.data
    assert published[-1].model == f"{NAME}/1"
    assert json.loads(capsys.readouterr().out)["published"]["corpus"] == str(registry.data)

    # Gone from this workspace: the fallback is --config's data (else the bundled corpus), and it is said.
    (registry.data / "corpus.jsonl").unlink()
    config = registry.workspace / "retrain.yaml"
    config.write_text(f"data:\n  path: {registry.data.parent / 'elsewhere'}\n")
    assert main(["rollback", *workspace]) == 2  # nothing to roll back to: no publication either
    capsys.readouterr()
    assert main(["promote", "1", "--config", str(config), *workspace]) == 0
    err = capsys.readouterr().err
    assert "is not readable in this workspace" in err
    assert f"indexing {registry.data.parent / 'elsewhere'} instead" in err
    assert published[-1].data.path == registry.data.parent / "elsewhere"
    assert main(["promote", "1", *workspace]) == 0
    assert "indexing the bundled SciFact corpus instead" in capsys.readouterr().err
    assert published[-1].data.path is None


def test_promote_and_rollback_move_the_alias_and_the_served_index_together(
    registry, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rollback used to move the alias only, leaving the bad index serving."""
    import faiss
    import numpy as np

    import denseflow.flows.publish_index as publish_flow
    from denseflow.model.index.build import IndexSpec
    from denseflow.model.index.store import build_manifest, publish, published_model_label

    client = MlflowClient()
    client.create_model_version(NAME, source=registry.data.as_uri(), run_id=registry.run_id)  # version 2
    root = registry.workspace / "indexes"
    published: list[str] = []

    def fake_publish(config: Any) -> SimpleNamespace:
        version = config.model.split("/")[1]
        published.append(version)
        index = faiss.IndexFlatIP(4)
        index.add(np.eye(4, dtype=np.float32)[:2])
        model = {"name": NAME, "version": version, "run_id": registry.run_id}
        manifest = build_manifest(IndexSpec(), 2, 4, model, "fp", 0.0, 1.0, 2)
        info = publish(root, "default", index, ["a", "b"], registry.data, manifest, keep=3)
        figures = {"name": "default", "version": info.version, "path": str(info.path), "documents": 2,
                   "documents_encoded": 2}  # fmt: skip
        return SimpleNamespace(summary=lambda: figures)

    monkeypatch.setattr(publish_flow, "run_publish", fake_publish)
    workspace = ["--workspace", str(registry.workspace)]
    assert main(["promote", "1", *workspace]) == 0
    assert main(["promote", "2", *workspace]) == 0
    assert published_model_label(root, "default") == f"{NAME}@2"
    capsys.readouterr()

    assert main(["rollback", "--dry-run", *workspace]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["production"] == {"from": "2", "to": "1"}
    assert "kept index version v0001" in plan["index"]["how"]
    assert published_model_label(root, "default") == f"{NAME}@2"  # a dry run changes nothing

    assert main(["rollback", *workspace]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["production"] == "1"
    assert result["published"]["reused"] is True  # the kept index, not a new publication
    assert published == ["1", "2"]
    assert published_model_label(root, "default") == f"{NAME}@1"
    assert main(["status", "--json", *workspace]) == 0
    status = json.loads(capsys.readouterr().out)
    assert (status["production"], status["index"]["serves"], status["agree"]) == ("1", f"{NAME}@1", True)


def test_promote_whose_publication_fails_leaves_production_where_it_was(
    registry, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import denseflow.flows.publish_index as publish_flow
    from denseflow.model.index.build import PublishedIndexError

    def failing_publish(config: Any) -> None:
        raise PublishedIndexError("recall@10 0.5 is below the floor 0.99: not published")

    monkeypatch.setattr(publish_flow, "run_publish", failing_publish)
    assert main(["promote", "1", "--workspace", str(registry.workspace)]) == 1
    assert "production unchanged" in capsys.readouterr().err
    with pytest.raises(Exception):  # noqa: B017 - MLflow raises its own error for an unset alias
        MlflowClient().get_model_version_by_alias(NAME, "production")
