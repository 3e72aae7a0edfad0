"""Register: log the model with MLflow's sentence_transformers flavour, register it, point ``candidate`` at it
(not for the base model registered because it beat the candidate: ``candidate`` stays the last trained)."""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict
from pathlib import Path

import mlflow
from prefect import task

from denseflow.model.config import RetrainConfig
from denseflow.model.context import RunContext
from denseflow.model.encoder import load_encoder, route_queries_by_default, tower_type
from denseflow.model.evaluation.summary import RetrainSummary
from denseflow.model.mining.negatives import mining_summary, read_examples
from denseflow.model.training.model_card import full_card, pipeline_section
from denseflow.model.training.trainer import training_record
from denseflow.registry.keys import CANDIDATE, SERVED_SYSTEM_TAG, metric_key
from denseflow.tasks.tracking import (
    log_artifact,
    run_logger,
    set_tags,
    set_version_alias,
    set_version_description,
    set_version_tags,
)


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
    model = route_queries_by_default(load_encoder(model_dir))
    towers = tower_type(model)
    example = ["vitamin D and bone density"]
    # A params schema, so pyfunc ``predict(texts, params={"task": "document"})`` reaches the document tower.
    signature = mlflow.models.infer_signature(example, model.encode(example), params={"task": "query"})
    info = mlflow.sentence_transformers.log_model(
        model,
        name=artifact_name,
        run_id=run_id,  # no active run: leaving ``with start_run`` would mark the run FINISHED
        registered_model_name=registered_model,
        # The flavour's own pinned list: inferring requirements re-imports the model in a
        # subprocess, which costs more than the rest of the registration.
        pip_requirements=mlflow.sentence_transformers.get_default_pip_requirements(),
        metadata={"towers": towers, "dataset_fingerprint": dataset_fingerprint},
        signature=signature,
    )
    set_tags(run_id, {"towers": towers})
    version = str(info.registered_model_version)
    tags = {"towers": towers, "dataset_fingerprint": dataset_fingerprint, "run_id": run_id}
    tags |= {metric_key(name): f"{value:.6f}" for name, value in metrics.items()}
    tags |= extra_tags or {}
    set_version_tags(registered_model, version, tags)
    if SERVED_SYSTEM_TAG in tags:  # the record as an artifact too, beside the model it describes
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"{artifact_name}_served_system.json"
            path.write_text(json.dumps(json.loads(tags[SERVED_SYSTEM_TAG]), indent=2), encoding="utf-8")
            log_artifact(run_id, path)
    if alias:
        set_version_alias(registered_model, alias, version)
    return version


MODEL_CARD_FILE = "model_card.md"


@task(name="model-card")
def describe_version(
    version: str,
    model_dir: str,
    summary: RetrainSummary,
    context: RunContext,
    examples_path: str,
    config: RetrainConfig,
) -> str | None:
    """The version's model card: its description in the registry and a ``model_card.md`` artifact of its run.

    A card that cannot be made never fails the run: the version is registered and gated already.
    """
    registered_model = config.tracking.registered_model
    try:
        folder = Path(model_dir)
        record = training_record(folder)
        training = asdict(record) if record else {}
        mining = dict(mining_summary(read_examples(Path(examples_path))))
        facts = summary.as_dict() | {"run_dir": str(context.run_dir)}
        card = full_card(folder, pipeline_section(facts, training, mining, config.model_dump(mode="json")))
        # The registry keeps descriptions up to 5000 characters in SQL stores: the whole card is the artifact.
        set_version_description(registered_model, version, registry_description(card))
        path = context.run_dir / MODEL_CARD_FILE
        path.write_text(card, encoding="utf-8")
        log_artifact(context.run_id, path)
        return str(path)
    except Exception as err:  # noqa: BLE001 - the card is documentation; the version stands without it
        run_logger().warning("model card for %s version %s not written: %s", registered_model, version, err)
        return None


DESCRIPTION_LIMIT = 5000


def registry_description(card: str, limit: int = DESCRIPTION_LIMIT) -> str:
    """The card's head (what the model is, its figures) within the registry's limit, and where the rest is."""
    if len(card) <= limit:
        return card
    tail = f"\n\n… the whole card is the run's `{MODEL_CARD_FILE}` artifact."
    return card[: limit - len(tail)].rsplit("\n", 1)[0] + tail
