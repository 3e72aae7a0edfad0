"""The ``retrain`` flow: ingest → mine → train → evaluate → register → promotion gate → publish (when promoted).

Only the order of the stages lives here.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from denseflow.flows.publish_index import publish_config_for, run_publish
from denseflow.model.config import IndexConfig, RetrainConfig
from denseflow.model.context import EvaluationData, build_context
from denseflow.model.encoder import resolve_base_model
from denseflow.model.evaluation.served import choose_served_mode
from denseflow.model.evaluation.summary import summary_markdown
from denseflow.model.index.store import published_model_label
from denseflow.model.workspace import workspace_dir
from denseflow.registry.keys import BASE_MODEL_TAG, HYBRID_METHOD_TAG, HYBRID_WEIGHT_TAG, SERVED_MODE_TAG, metric_key
from denseflow.tasks.evaluate import BASE_HYBRID, BM25, HYBRID, evaluate, hybrid, plot_recall
from denseflow.tasks.ingest import ingest
from denseflow.tasks.mine import mine
from denseflow.tasks.promotion import promotion_gate, ship_base_model
from denseflow.tasks.registry import describe_version, register
from denseflow.tasks.tracking import (
    configure_tracking,
    end_tracking_run,
    log_metrics,
    run_url,
    start_tracking_run,
)
from denseflow.tasks.train import train

SUMMARY_METRICS = ("ndcg@10", "mrr@10", "recall@1", "recall@10", "recall@100")


@flow(name="retrain")
def retrain(config: RetrainConfig | None = None) -> dict:
    config = config or RetrainConfig()
    workspace = workspace_dir(config.workspace)
    configure_tracking(config.tracking, workspace)
    run_id = start_tracking_run(config, flow_run.id, config.run_name)
    context = build_context(
        workspace,
        run_id,
        config.train.precision,
        config.train.max_seq_length,
        config.train.batch_size,
        config.eval.batch_size,
    )
    base_model = resolve_base_model(config.train.base_model)
    split, train_split = config.data.eval_split, config.data.train_split
    try:
        data = ingest(config.data, context.run_dir, run_id)
        dataset_dir, dev_split = data["dataset_dir"], data["dev_split"]
        # A dev split of a few queries is reported, but choosing on it would choose by noise: priors instead.
        selection_split = dev_split if data["dev_queries"] >= config.data.min_dev_queries else None
        if dev_split and selection_split is None:
            get_run_logger().warning(
                "%d dev queries (< data.min_dev_queries %d): no choice is made on dev; documented priors are used",
                data["dev_queries"],
                config.data.min_dev_queries,
            )
        examples = mine(
            dataset_dir,
            config.mining,
            train_split,
            split,
            context.run_dir,
            run_id,
            context.cache_dir,
            model_dir=base_model,
            max_seq_length=context.max_seq_length,
            precision=context.precision,
            workspace=workspace,
        )
        model_dir = train(
            dataset_dir, examples, config.train, train_split, selection_split, data["fingerprint"], context
        )
        tune = selection_split is not None
        splits = dict(dataset_dir=dataset_dir, split=split, dev_split=dev_split, settings=config.eval, context=context)
        trained = evaluate(model_dir, "trained", **splits, train_split=train_split)
        bm25 = evaluate(BM25, "bm25", **splits, metric_prefix="bm25.", train_split=train_split)
        fused = hybrid(trained, bm25, **splits, tune_on_dev=tune, train_split=train_split)
        # The base model's own system: what the gate must beat, so a retrain never ships worse than doing nothing.
        zero_shot = evaluate(base_model, "zero-shot", **splits, metric_prefix="zeroshot.", train_split=train_split)
        base_fused = hybrid(zero_shot, bm25, **splits, label=BASE_HYBRID, tune_on_dev=tune, train_split=train_split)
        evaluations = [fused, trained, base_fused, zero_shot, bm25]
        gains = {name: trained["metrics"][name] - zero_shot["metrics"][name] for name in SUMMARY_METRICS}
        log_metrics(run_id, gains, prefix="gain_over_zeroshot.")
        plot_recall(evaluations, context, f"recall@k on {split}")
        mode, mode_reason = served_mode_of(trained, fused, config.promotion.mode, tune)
        base_mode, base_reason = served_mode_of(zero_shot, base_fused, config.promotion.mode, tune)
        served = fused if mode == "hybrid" else trained
        base_served = base_fused if base_mode == "hybrid" else zero_shot
        get_run_logger().info(
            "served mode %s (%s); base model's system %s (%s)", mode, mode_reason, base_mode, base_reason
        )
        version = register(
            model_dir,
            run_id,
            config.tracking.registered_model,
            served["metrics"],
            data["fingerprint"],
            registration_tags(served, trained, fused, mode, mode_reason),
        )
        promotion = {"decision": "skipped", "promote": False, "reason": "promotion.enabled is false"}
        if config.promotion.enabled:
            promotion = promotion_gate(
                version,
                served["metrics"],
                EvaluationData(Path(dataset_dir), data["fingerprint"], split),
                config.promotion,
                config.eval,
                config.tracking.registered_model,
                context,
                base_served["metrics"],
            )
            if promotion.get("ship_base"):
                base_version = register(
                    base_model,
                    run_id,
                    config.tracking.registered_model,
                    base_served["metrics"],
                    data["fingerprint"],
                    registration_tags(base_served, zero_shot, base_fused, base_mode, base_reason)
                    | {BASE_MODEL_TAG: "true"},
                    artifact_name="base_model",
                    alias=None,
                )
                promotion = ship_base_model(promotion, base_version, config.tracking.registered_model, context)
        summary = {
            "mlflow_run_id": run_id,
            "mlflow_run_url": run_url(run_id),
            "registered_model": config.tracking.registered_model,
            "version": version,
            "dataset_fingerprint": data["fingerprint"],
            "dev_split": dev_split,
            "dev_method": data["dev_method"],
            "selection_split": selection_split,
            "served_mode": mode,
            "served_mode_chosen_by": mode_reason,
            "base_served_mode": base_mode,
            "metrics": {item["label"]: item["metrics"] for item in evaluations},
            "partitions": {item["label"]: item["partitions"] for item in evaluations},
            "dev_metrics": {item["label"]: item["dev_metrics"] for item in evaluations if "dev_metrics" in item},
            "dev_intervals": {item["label"]: item["dev"]["interval"] for item in evaluations if "dev" in item},
            "promotion": promotion,
        }
        if mode == "hybrid":
            summary["hybrid"] = {key: fused[key] for key in ("weight", "method", "weight_chosen_by")}
        describe_version(
            version,
            model_dir,
            summary | {"run_dir": str(context.run_dir)},
            examples,
            config.model_dump(mode="json"),
            config.tracking.registered_model,
        )
        if config.promotion.publish_on_promotion:
            target = publish_target(config, promotion, workspace)
            if target is not None:
                summary["published"] = publish_version_of(config, target, dataset_dir, workspace)
    except BaseException:
        end_tracking_run(run_id, "FAILED")
        raise
    # Ended after publication: a run killed while publishing must not read FINISHED.
    end_tracking_run(run_id)
    create_markdown_artifact(markdown=summary_markdown(summary, split), key="retrain-summary", description="retrain")
    get_run_logger().info(
        "registered %s version %s (MLflow run %s); served mode %s",
        summary["registered_model"],
        version,
        run_id,
        mode,
    )
    return summary


def served_mode_of(dense: dict, fused: dict, configured: str, can_choose: bool) -> tuple[str, str]:
    return choose_served_mode(configured, dense.get("dev_metrics"), fused.get("dev_metrics"), can_choose)


def registration_tags(served: dict, dense: dict, fused: dict, mode: str, mode_reason: str) -> dict[str, str]:
    """What serving needs to reproduce the registered figures, and each mode's own figures beside them (all
    queries and each seen-/unseen-document partition)."""
    tags = {SERVED_MODE_TAG: mode, "served.mode_chosen_by": mode_reason[:250]}
    if mode == "hybrid":
        tags |= {HYBRID_WEIGHT_TAG: f"{fused['weight']:.4f}", HYBRID_METHOD_TAG: fused["method"]}
    for role, item in (("trained", dense), (HYBRID, fused), ("", served)):
        prefix = f"{role}." if role else ""
        if role:
            tags |= {metric_key(name, prefix): f"{value:.6f}" for name, value in item["metrics"].items()}
        for part, entry in item["partitions"].items():
            if entry["metrics"] is not None:
                tags[metric_key("ndcg@10", f"{prefix}{part}.")] = f"{entry['metrics']['ndcg@10']:.6f}"
            tags[f"{prefix}{part}.queries"] = str(entry["queries"])
    return tags


def publish_target(config: RetrainConfig, promotion: dict, workspace: Path) -> str | None:
    """The version to publish now: the one this run promoted, else production when its index is missing.

    A crash between the gate's move and the publication (or a publication that failed) leaves production
    without an index; the next run repairs that instead of waiting for another promotion.
    """
    if promotion.get("promote"):
        return str(promotion["version"])
    production = promotion.get("production")
    if production is not None and str(production) == str(promotion.get("base_version")):
        return str(production)  # the base model's system won the gate
    if production is None:
        return None
    label = published_model_label(workspace / "indexes", IndexConfig().name)
    expected = f"{config.tracking.registered_model}@{production}"
    if label == expected:
        return None
    get_run_logger().warning(
        "production is %s but the published index serves %s: publishing production again", expected, label or "nothing"
    )
    return str(production)


def publish_version_of(config: RetrainConfig, version: str, dataset_dir: str, workspace: Path) -> dict:
    """Publish this run's corpus encoded by ``version`` (the publish_index flow).

    Same sequence length as evaluation, so publication reuses the corpus embeddings evaluation cached.
    """
    model = f"{config.tracking.registered_model}/{version}"
    publish_config = publish_config_for(
        workspace, Path(dataset_dir), model, config.tracking, config.train.max_seq_length
    )
    result = run_publish(publish_config)
    published = {key: result[key] for key in ("name", "version", "path", "documents", "shards", "shards_reused")}
    search = (result.get("model") or {}).get("search") or {}
    return published | {"mode": search.get("mode"), "hybrid": search.get("hybrid")}
