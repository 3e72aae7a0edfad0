"""Promotion gate and manual control of the ``production`` alias, with a recorded history.

The gate compares the new version with whatever ``production`` points at *now* in the registry (so an
alias moved by hand in the MLflow UI counts), on figures from the same dataset fingerprint and split:
production's registered figures when they match, else a re-evaluation of the production model on this
run's data (cached on that version as a tag). Every decision lands as ``promotion.*`` tags on the
candidate version and on the MLflow run; every alias move appends to a JSON history kept as a tag of
the registered model, which ``rollback`` replays.

The whole gate (read production, measure, decide, move) holds the workspace's production lock, so gates and
``promote``/``rollback`` sharing a workspace run one after another, each against the production the one
before left. The move itself is a compare-and-set on the production the gate read: a move made meanwhile by
a process that shares only the MLflow server makes this gate stand down (decision ``conflict``, production
untouched, the reason says what moved) instead of overwriting it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient
from prefect import task

from denseflow.model.config import EvalConfig, PromotionConfig
from denseflow.model.context import EvaluationData, RunContext
from denseflow.model.data.beir import RejectLog, load_beir
from denseflow.model.evaluation.hybrid import NEUTRAL_WEIGHT, fuse_runs
from denseflow.model.evaluation.runs import bm25_run, dense_run, score_run
from denseflow.model.promotion import Decision, Scored, decide
from denseflow.registry.aliases import ProductionChanged, move_production, now, production_lock, production_version
from denseflow.registry.keys import HYBRID_METHOD_TAG, HYBRID_WEIGHT_TAG, SERVED_MODE_TAG, metric_key
from denseflow.registry.resolve import resolve_model
from denseflow.tasks.tracking import log_artifact, log_metrics

EVAL_SPLIT_TAG = "eval_split"


def reevaluation_tag(fingerprint: str, split: str, mode: str = "dense") -> str:
    """Tag on a version holding its metrics (JSON) re-measured on another dataset and split, in one search mode."""
    return f"eval.{fingerprint}.{split}" if mode == "dense" else f"eval.{fingerprint}.{split}.{mode}"


def _production_figure(
    client: MlflowClient,
    production: ModelVersion,
    metric: str,
    fingerprint: str,
    split: str,
    reevaluate: Callable[[str], dict[str, float]],
    mode: str = "dense",
) -> Scored:
    """Production's figure on this run's data and in the served mode: registered, cached from an earlier
    re-evaluation, or measured now. Versions registered before modes existed were dense."""
    tags = production.tags
    same_data = tags.get("dataset_fingerprint") == fingerprint and tags.get(EVAL_SPLIT_TAG, split) == split
    same_mode = tags.get(SERVED_MODE_TAG, "dense") == mode
    if same_data and same_mode and metric_key(metric) in tags:
        return Scored(str(production.version), float(tags[metric_key(metric)]), fingerprint)
    cached = tags.get(reevaluation_tag(fingerprint, split, mode))
    metrics = json.loads(cached) if cached else None
    if metrics is None or metric not in metrics:
        metrics = reevaluate(str(production.version))
        client.set_model_version_tag(
            production.name, str(production.version), reevaluation_tag(fingerprint, split, mode), json.dumps(metrics)
        )
    return Scored(str(production.version), float(metrics[metric]), fingerprint, reevaluated=True)


def run_gate(
    version: str,
    candidate_metrics: dict[str, float],
    data: EvaluationData,
    settings: PromotionConfig,
    eval_settings: EvalConfig,
    registered_model: str,
    context: RunContext,
    base_metrics: dict[str, float] | None = None,
) -> dict:
    """Decide, record the decision, and move ``production`` when the candidate wins. Returns the decision.

    ``base_metrics``: the base model's own system on the same data, in its served mode; the candidate must beat
    it too. Production is measured as it is served (its registered ``served.mode``).
    """
    metric = settings.metric
    if metric not in candidate_metrics:
        raise ValueError(f"promotion.metric {metric!r} was not evaluated; available: {sorted(candidate_metrics)}")
    client = MlflowClient()
    version = str(version)
    dataset_fingerprint, dataset_dir, split = data.fingerprint, data.dataset_dir, data.split
    run_id, workspace = context.run_id, context.workspace
    client.set_model_version_tag(registered_model, version, EVAL_SPLIT_TAG, split)
    out_dir = context.run_dir / "evaluation"
    out_dir.mkdir(parents=True, exist_ok=True)

    def reevaluate(production: str) -> dict[str, float]:
        resolved = resolve_model(f"{registered_model}/{production}", workspace, default_name=registered_model)
        dataset = load_beir(Path(dataset_dir), [split], RejectLog())
        run = dense_run(
            resolved.local_dir,
            dataset,
            split,
            context.cache_dir,
            context.max_seq_length,
            eval_settings.batch_size,
            context.precision,
        )
        tags = client.get_model_version(registered_model, production).tags
        if tags.get(SERVED_MODE_TAG, "dense") == "hybrid":
            # Production as it is served: fused with BM25 at its own registered weight and method.
            weight = float(tags.get(HYBRID_WEIGHT_TAG, NEUTRAL_WEIGHT))
            method = tags.get(HYBRID_METHOD_TAG, eval_settings.fusion)
            run = fuse_runs(
                run, bm25_run(dataset, split), weight, method, eval_settings.rrf_k, eval_settings.fusion_depth
            )
        evaluation = score_run("production", run, dataset.qrels[split], eval_settings.ks)
        path = out_dir / "metrics_production.json"
        payload = {"label": "production", "version": production, "split": split, "metrics": evaluation.metrics}
        path.write_text(json.dumps(payload, indent=2))
        log_artifact(run_id, path, "evaluation")
        log_metrics(run_id, evaluation.metrics, prefix="production.")
        return evaluation.metrics

    candidate = Scored(version, float(candidate_metrics[metric]), dataset_fingerprint)
    base = Scored("base", float(base_metrics[metric]), dataset_fingerprint) if base_metrics else None
    with production_lock(registered_model, workspace):
        current = production_version(client, registered_model)
        production = (
            _production_figure(
                client,
                current,
                metric,
                dataset_fingerprint,
                split,
                reevaluate,
                current.tags.get(SERVED_MODE_TAG, "dense"),
            )
            if current
            else None
        )
        decision: Decision = decide(candidate, production, metric, settings.margin, base)
        outcome = decision.as_dict()
        tags = decision.as_tags()
        moved = None
        if decision.promote:
            try:
                moved = move_production(
                    client,
                    registered_model,
                    version,
                    "gate",
                    decision.reason,
                    expected=str(current.version) if current else None,
                )
            except ProductionChanged as err:
                reason = f"conflict: {err}"
                outcome |= {"decision": "conflict", "promote": False, "reason": reason}
                tags |= {"promotion.decision": "conflict", "promotion.reason": reason}
    at = now()
    tags |= {"promotion.at": at, "promotion.run_id": run_id}
    for key, value in tags.items():
        client.set_model_version_tag(registered_model, version, key, value)
    for key in ("promotion.decision", "promotion.reason"):
        client.set_tag(run_id, key, tags[key])
    if decision.delta is not None:
        log_metrics(run_id, {"promotion.delta": decision.delta})
    latest = production_version(client, registered_model) if outcome["decision"] == "conflict" else None
    result = outcome | {
        "version": version,
        "production": moved["production"]
        if moved
        else (str(latest.version) if latest else (production.version if production else None)),
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
    candidate_metrics: dict[str, float],
    data: EvaluationData,
    settings: PromotionConfig,
    eval_settings: EvalConfig,
    registered_model: str,
    context: RunContext,
    base_metrics: dict[str, float] | None = None,
) -> dict:
    return run_gate(version, candidate_metrics, data, settings, eval_settings, registered_model, context, base_metrics)


@task(name="ship-base-model")
def ship_base_model(gate: dict, base_version: str, registered_model: str, context: RunContext) -> dict:
    """Make the registered base model production after a gate said ``ship_base``; compare-and-set on the
    production that gate read, so a move made meanwhile wins and this one stands down (``conflict``)."""
    client = MlflowClient()
    reason = f"base model's system ships: {gate['reason']}"[:480]
    expected = gate.get("previous_production")
    with production_lock(registered_model, context.workspace):
        try:
            moved = move_production(client, registered_model, base_version, "gate", reason, expected=expected)
        except ProductionChanged as err:
            result = gate | {"decision": "conflict", "reason": f"conflict: {err}", "base_version": base_version}
        else:
            result = gate | {"production": moved["production"], "base_version": base_version, "promote": False}
    for key, value in {"promotion.decision": result["decision"], "promotion.reason": result["reason"]}.items():
        client.set_model_version_tag(registered_model, base_version, key, value)
    path = context.run_dir / "evaluation" / "promotion.json"
    path.write_text(json.dumps(result, indent=2))
    log_artifact(context.run_id, path)
    return result
