"""The ``production`` alias moved by a person or the gate, with a recorded history.

Every alias move appends to a JSON history kept as a tag of the registered model, which ``rollback`` replays.
Plain MLflow client calls: no Prefect, so the CLI and the gate share them.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from denseflow.model.promotion import Move, dump_history, parse_history, reconcile, record, rollback_target
from denseflow.registry.keys import HISTORY_TAG, KEY_METRICS, LAST_MOVE_TAG, PRODUCTION, metric_key
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def production_version(client: MlflowClient, name: str) -> ModelVersion | None:
    """The version ``production`` points at in the registry now; None when unset (or no such model)."""
    try:
        return client.get_model_version_by_alias(name, PRODUCTION)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def read_history(client: MlflowClient, name: str) -> list[Move]:
    return parse_history(client.get_registered_model(name).tags.get(HISTORY_TAG))


def move_production(client: MlflowClient, name: str, version: str, action: str, reason: str) -> dict:
    """Point ``production`` at ``version`` and record the move (after any move made outside denseflow)."""
    version = str(client.get_model_version(name, version).version)  # fails clearly on an unknown version
    current = production_version(client, name)
    at = now()
    history = reconcile(read_history(client, name), str(current.version) if current else None, at)
    history = record(history, version, action, at, reason)
    client.set_registered_model_alias(name, PRODUCTION, version)
    client.set_registered_model_tag(name, HISTORY_TAG, dump_history(history))
    move = {"action": action, "at": at, "reason": reason, "previous": history[-1].previous}
    client.set_model_version_tag(name, version, LAST_MOVE_TAG, json.dumps(move))
    return {"name": name, "production": version, "previous": history[-1].previous, "action": action, "at": at}


def promote(name: str, version: str, reason: str = "") -> dict:
    """A person's decision: ``production`` → ``version``, whatever the figures say."""
    return move_production(MlflowClient(), name, str(version), "promote", reason or "manual promotion")


def rollback(name: str, reason: str = "") -> dict:
    """``production`` back to the version before the current one, from the recorded history."""
    client = MlflowClient()
    current = production_version(client, name)
    history = reconcile(read_history(client, name), str(current.version) if current else None, now())
    target = rollback_target(history)
    return move_production(client, name, target, "rollback", reason or f"rollback from {history[-1].version}")


def list_versions(name: str) -> list[dict]:
    """Every version, newest first: aliases, key metrics, data fingerprint and the gate's decision."""
    client = MlflowClient()
    versions = client.search_model_versions(f"name = '{name}'")
    rows = []
    for found in sorted(versions, key=lambda item: int(item.version), reverse=True):
        detail = client.get_model_version(name, found.version)  # search results may omit aliases
        tags = detail.tags
        rows.append(
            {
                "version": str(detail.version),
                "aliases": sorted(detail.aliases or []),
                "created": datetime.fromtimestamp(detail.creation_timestamp / 1000, UTC).isoformat(timespec="seconds"),
                "metrics": {m: float(tags[metric_key(m)]) for m in KEY_METRICS if metric_key(m) in tags},
                "dataset_fingerprint": tags.get("dataset_fingerprint"),
                "decision": tags.get("promotion.decision"),
                "run_id": detail.run_id,
            }
        )
    return rows
