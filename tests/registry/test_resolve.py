"""Resolving a version to what it was trained on (registry/resolve.py): ``promote/rollback --publish`` index the
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
    assert main(["promote", "1", "--publish", *workspace]) == 0
    assert published[-1].data.path == registry.data
    assert published[-1].model == f"{NAME}/1"
    assert json.loads(capsys.readouterr().out)["published"]["corpus"] == str(registry.data)

    # Gone from this workspace: the fallback is --config's data (else the bundled corpus), and it is said.
    (registry.data / "corpus.jsonl").unlink()
    config = registry.workspace / "retrain.yaml"
    config.write_text(f"data:\n  path: {registry.data.parent / 'elsewhere'}\n")
    assert main(["rollback", "--publish", *workspace]) == 2  # nothing to roll back to: no publication either
    capsys.readouterr()
    assert main(["promote", "1", "--publish", "--config", str(config), *workspace]) == 0
    err = capsys.readouterr().err
    assert "is not readable in this workspace" in err
    assert f"indexing {registry.data.parent / 'elsewhere'} instead" in err
    assert published[-1].data.path == registry.data.parent / "elsewhere"
    assert main(["promote", "1", "--publish", *workspace]) == 0
    assert "indexing the bundled SciFact corpus instead" in capsys.readouterr().err
    assert published[-1].data.path is None
