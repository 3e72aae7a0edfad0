"""Promotion gate and manual control of the ``production`` alias, with a recorded history.

The gate compares the new version with whatever ``production`` points at *now* in the registry (so an
alias moved by hand in the MLflow UI counts), on figures from the same dataset fingerprint and split:
production's registered figures when they match, else a re-evaluation of the production model on this
run's data (cached on that version as a tag). Every decision lands as ``promotion.*`` tags on the
candidate version and on the MLflow run; every alias move appends to a JSON history kept as a tag of
the registered model, which ``rollback`` replays.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from prefect import task

from model.config import EvalConfig, PromotionConfig
from model.data import RejectLog, load_beir
from model.evaluation import dense_run, score_run
from model.promotion import (
    Decision,
    Move,
    Scored,
    decide,
    dump_history,
    parse_history,
    reconcile,
    record,
    rollback_target,
)
from tasks.registry import PRODUCTION, resolve_model
from tasks.tracking import log_artifact, log_metrics, metric_key

HISTORY_TAG = "denseflow.production_history"
EVAL_SPLIT_TAG = "eval_split"
LAST_MOVE_TAG = "production.last_move"
KEY_METRICS = ("ndcg@10", "mrr@10", "recall@10", "recall@100")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def reevaluation_tag(fingerprint: str, split: str) -> str:
    """Tag on a version holding its metrics (JSON) re-measured on another dataset and split."""
    return f"eval.{fingerprint}.{split}"


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


def _production_figure(
    client: MlflowClient,
    production: ModelVersion,
    metric: str,
    fingerprint: str,
    split: str,
    reevaluate: Callable[[str], dict[str, float]],
) -> Scored:
    """Production's figure on this run's data: registered, cached from an earlier re-evaluation, or measured now."""
    tags = production.tags
    same_data = tags.get("dataset_fingerprint") == fingerprint and tags.get(EVAL_SPLIT_TAG, split) == split
    if same_data and metric_key(metric) in tags:
        return Scored(str(production.version), float(tags[metric_key(metric)]), fingerprint)
    cached = tags.get(reevaluation_tag(fingerprint, split))
    metrics = json.loads(cached) if cached else None
    if metrics is None or metric not in metrics:
        metrics = reevaluate(str(production.version))
        client.set_model_version_tag(
            production.name, str(production.version), reevaluation_tag(fingerprint, split), json.dumps(metrics)
        )
    return Scored(str(production.version), float(metrics[metric]), fingerprint, reevaluated=True)


def run_gate(
    version: str,
    registered_model: str,
    settings: PromotionConfig,
    candidate_metrics: dict[str, float],
    dataset_fingerprint: str,
    dataset_dir: Path,
    split: str,
    eval_settings: EvalConfig,
    max_seq_length: int | None,
    out_dir: Path,
    cache_dir: Path,
    run_id: str,
    workspace: Path,
) -> dict:
    """Decide, record the decision, and move ``production`` when the candidate wins. Returns the decision."""
    metric = settings.metric
    if metric not in candidate_metrics:
        raise ValueError(f"promotion.metric {metric!r} was not evaluated; available: {sorted(candidate_metrics)}")
    client = MlflowClient()
    version = str(version)
    client.set_model_version_tag(registered_model, version, EVAL_SPLIT_TAG, split)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    def reevaluate(production: str) -> dict[str, float]:
        resolved = resolve_model(f"{registered_model}/{production}", workspace, default_name=registered_model)
        dataset = load_beir(Path(dataset_dir), [split], RejectLog())
        run = dense_run(
            resolved.local_dir,
            dataset,
            split,
            cache_dir,
            max_seq_length,
            eval_settings.batch_size,
            eval_settings.precision,
        )
        evaluation = score_run("production", run, dataset.qrels[split], eval_settings.ks)
        path = out_dir / "metrics_production.json"
        payload = {"label": "production", "version": production, "split": split, "metrics": evaluation.metrics}
        path.write_text(json.dumps(payload, indent=2))
        log_artifact(run_id, path, "evaluation")
        log_metrics(run_id, evaluation.metrics, prefix="production.")
        return evaluation.metrics

    candidate = Scored(version, float(candidate_metrics[metric]), dataset_fingerprint)
    current = production_version(client, registered_model)
    production = (
        _production_figure(client, current, metric, dataset_fingerprint, split, reevaluate) if current else None
    )
    decision: Decision = decide(candidate, production, metric, settings.margin)

    at = now()
    tags = decision.as_tags() | {"promotion.at": at, "promotion.run_id": run_id}
    for key, value in tags.items():
        client.set_model_version_tag(registered_model, version, key, value)
    for key in ("promotion.decision", "promotion.reason"):
        client.set_tag(run_id, key, tags[key])
    if decision.delta is not None:
        log_metrics(run_id, {"promotion.delta": decision.delta})
    moved = move_production(client, registered_model, version, "gate", decision.reason) if decision.promote else None
    result = decision.as_dict() | {
        "version": version,
        "production": moved["production"] if moved else (production.version if production else None),
        "previous_production": production.version if production else None,
        "at": at,
    }
    path = out_dir / "promotion.json"
    path.write_text(json.dumps(result, indent=2))
    log_artifact(run_id, path)
    return result


@task(name="promotion-gate")
def promotion_gate(
    version: str,
    registered_model: str,
    settings: PromotionConfig,
    candidate_metrics: dict[str, float],
    dataset_fingerprint: str,
    dataset_dir: Path,
    split: str,
    eval_settings: EvalConfig,
    max_seq_length: int | None,
    out_dir: Path,
    cache_dir: Path,
    run_id: str,
    workspace: Path,
) -> dict:
    return run_gate(
        version,
        registered_model,
        settings,
        candidate_metrics,
        dataset_fingerprint,
        dataset_dir,
        split,
        eval_settings,
        max_seq_length,
        out_dir,
        cache_dir,
        run_id,
        workspace,
    )
