"""The ``production`` alias moved by a person or the gate, with a recorded history.

Every alias move appends to a JSON history kept as a tag of the registered model, which ``rollback`` replays.
Plain MLflow client calls: no Prefect, so the CLI and the gate share them.

Concurrency. Every move (gate, promote, rollback) runs under ``production_lock``, a file lock in the workspace:
processes sharing a workspace are serialised, so the history tag (read-modify-write) never loses a move and
the gate never compares against a stale production. For processes that share only the MLflow server,
``move_production`` is a compare-and-set: it re-reads ``production`` right before moving and refuses
(``ProductionChanged``) when it is no longer what the caller decided against, and it re-reads once more after
writing to tell a writer that lost a last-millisecond race. MLflow has no atomic alias update, so across
workspaces two moves within the same few milliseconds can still both land (the history then records the
later one as ``external``); one shared workspace (or lock) is the full guarantee.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from denseflow.model.promotion import Move, dump_history, parse_history, reconcile, record, rollback_target
from denseflow.model.workspace import workspace_dir, workspace_lock
from denseflow.registry.keys import HISTORY_TAG, KEY_METRICS, LAST_MOVE_TAG, PRODUCTION, metric_key


class ProductionChanged(RuntimeError):
    """``production`` moved between the caller's read and its move: the caller's decision is stale."""

    def __init__(self, name: str, expected: str | None, found: str | None, after_write: bool = False) -> None:
        self.expected, self.found = expected, found
        when = "right after this move" if after_write else "since it was read"
        super().__init__(
            f"{name}: production moved {when} (v{expected or 'none'} → v{found or 'none'}) by another process; "
            "nothing was overwritten: re-run to decide against the new production"
        )


_ANY = object()  # move_production's ``expected`` default: no compare-and-set


@contextmanager
def production_lock(name: str, workspace: Path | str | None = None) -> Iterator[Path]:
    """Exclusive right to move ``name``'s production among processes sharing the workspace (not re-entrant)."""
    with workspace_lock(workspace_dir(workspace), f"production-{name}") as path:
        yield path


def _version_of(found: ModelVersion | None) -> str | None:
    return str(found.version) if found else None


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


def move_production(
    client: MlflowClient,
    name: str,
    version: str,
    action: str,
    reason: str,
    expected: str | None | object = _ANY,
) -> dict:
    """Point ``production`` at ``version`` and record the move (after any move made outside denseflow).

    Call under ``production_lock``. ``expected``: the production version (None = unset) the caller decided
    against; when given, the move is refused with ``ProductionChanged`` if production is no longer that.
    The history tag is written before the alias, so a crash between the two leaves a recorded move that
    the next move reconciles (an ``external`` line), never a move missing from the history.
    """
    version = str(client.get_model_version(name, version).version)  # fails clearly on an unknown version
    current = _version_of(production_version(client, name))
    if expected is not _ANY and current != expected:
        raise ProductionChanged(name, expected, current)  # type: ignore[arg-type]
    at = now()
    history = reconcile(read_history(client, name), current, at)
    history = record(history, version, action, at, reason)
    client.set_registered_model_tag(name, HISTORY_TAG, dump_history(history))
    client.set_registered_model_alias(name, PRODUCTION, version)
    move = {"action": action, "at": at, "reason": reason, "previous": history[-1].previous}
    client.set_model_version_tag(name, version, LAST_MOVE_TAG, json.dumps(move))
    landed = _version_of(production_version(client, name))
    if landed != version:  # another writer (sharing only the server) moved it within these milliseconds
        raise ProductionChanged(name, version, landed, after_write=True)
    return {"name": name, "production": version, "previous": history[-1].previous, "action": action, "at": at}


def promote(name: str, version: str, reason: str = "", workspace: Path | str | None = None) -> dict:
    """A person's decision: ``production`` → ``version``, whatever the figures say (waits for a running gate)."""
    with production_lock(name, workspace):
        return move_production(MlflowClient(), name, str(version), "promote", reason or "manual promotion")


def planned_rollback(name: str) -> tuple[str | None, str]:
    """``(current production, the version rollback would move it to)``; nothing moves."""
    client = MlflowClient()
    current = _version_of(production_version(client, name))
    return current, rollback_target(reconcile(read_history(client, name), current, now()))


def rollback(
    name: str, reason: str = "", workspace: Path | str | None = None, planned: tuple[str | None, str] | None = None
) -> dict:
    """``production`` back to the version before the current one, from the recorded history.

    ``planned``: the ``(current, target)`` of :func:`planned_rollback` the caller acted on (it published the target's
    index); when production moved since, :class:`ProductionChanged` and nothing moves."""
    client = MlflowClient()
    with production_lock(name, workspace):
        current = _version_of(production_version(client, name))
        history = reconcile(read_history(client, name), current, now())
        target = rollback_target(history)
        if planned is not None and planned != (current, target):
            raise ProductionChanged(name, planned[0], current)
        reason = reason or f"rollback from {history[-1].version}"
        return move_production(client, name, target, "rollback", reason, expected=current)


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
