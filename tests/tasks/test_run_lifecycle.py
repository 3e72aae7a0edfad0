"""An MLflow run a task wrote to stays RUNNING until its flow ends it (issue 11, item 4).

``with mlflow.start_run(run_id=...)`` inside a task ends the run as FINISHED on exit, so a retrain killed in
any later stage left a FINISHED run with no metrics. The tasks now write through the client only.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from prefect.logging import disable_run_logger

from denseflow.model.config import DataConfig, TrackingConfig
from denseflow.tasks.ingest import ingest
from denseflow.tasks.registry import register
from denseflow.tasks.tracking import configure_tracking


@pytest.fixture()
def run_id(tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    configure_tracking(TrackingConfig(tracking_uri=uri, experiment="test"), tmp_path)
    client = MlflowClient()
    run = client.create_run(client.get_experiment_by_name("test").experiment_id)
    yield run.info.run_id
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


def test_ingest_leaves_the_run_running(run_id, tiny_beir_dir, tmp_path):
    with disable_run_logger():
        result = ingest.fn(DataConfig(path=tiny_beir_dir, eval_split="test"), tmp_path / "run", run_id)
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "RUNNING"
    assert run.data.tags["dataset_fingerprint"] == result.fingerprint
    assert {item.dataset.digest for item in run.inputs.dataset_inputs} == {result.fingerprint}
    assert mlflow.active_run() is None


def test_register_leaves_the_run_running(run_id, tiny_model_dir):
    version = register.fn(str(tiny_model_dir), run_id, "retriever", {"ndcg@10": 0.5}, "fp")
    client = MlflowClient()
    assert client.get_run(run_id).info.status == "RUNNING"
    assert client.get_run(run_id).data.tags["towers"]
    found = client.get_model_version("retriever", version)
    assert found.run_id == run_id and "candidate" in found.aliases
    assert mlflow.active_run() is None
