"""Register: log the model with MLflow's sentence_transformers flavour, register it, point ``candidate`` at it
(not for the base model registered because it beat the candidate: ``candidate`` stays the last trained)."""

from __future__ import annotations

import mlflow
from mlflow.tracking import MlflowClient
from prefect import task

from denseflow.model.encoder import load_encoder, tower_type
from denseflow.registry.keys import CANDIDATE, metric_key


@task(name="register", retries=2, retry_delay_seconds=5)
def register(
    model_dir: str,
    run_id: str,
    registered_model: str,
    metrics: dict[str, float],
    dataset_fingerprint: str,
    extra_tags: dict[str, str] | None = None,
    artifact_name: str = "model",
    alias: str | None = CANDIDATE,
) -> str:
    """Log and register the model from ``model_dir``; alias ``candidate`` moves to the new version.

    ``metrics`` are the figures of the mode that will be served (the gate compares them); ``extra_tags`` carry
    what serving needs to reproduce them (mode, fusion weight) and the other modes' figures.
    """
    model = load_encoder(model_dir)
    towers = tower_type(model)
    info = mlflow.sentence_transformers.log_model(
        model,
        name=artifact_name,
        run_id=run_id,  # no active run: leaving ``with start_run`` would mark the run FINISHED
        registered_model_name=registered_model,
        # The flavour's own pinned list: inferring requirements re-imports the model in a
        # subprocess and takes tens of seconds per registration on 2 cores.
        pip_requirements=mlflow.sentence_transformers.get_default_pip_requirements(),
        metadata={"towers": towers, "dataset_fingerprint": dataset_fingerprint},
    )
    MlflowClient().set_tag(run_id, "towers", towers)
    version = str(info.registered_model_version)
    client = MlflowClient()
    tags = {"towers": towers, "dataset_fingerprint": dataset_fingerprint, "run_id": run_id}
    tags |= {metric_key(name): f"{value:.6f}" for name, value in metrics.items()}
    tags |= extra_tags or {}
    for key, value in tags.items():
        client.set_model_version_tag(registered_model, version, key, value)
    if alias:
        client.set_registered_model_alias(registered_model, alias, version)
    return version
