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
from denseflow.model.index.store import published_model_label
from denseflow.model.workspace import workspace_dir
from denseflow.tasks.evaluate import BM25, HYBRID, evaluate, hybrid, plot_recall
from denseflow.tasks.ingest import ingest
from denseflow.tasks.mine import mine
from denseflow.tasks.promotion import promotion_gate
from denseflow.tasks.registry import register
from denseflow.tasks.tracking import configure_tracking, end_tracking_run, log_metrics, metric_key, start_tracking_run
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
    split = config.data.eval_split
    try:
        data = ingest(config.data, context.run_dir, run_id)
        dataset_dir, dev_split = data["dataset_dir"], data["dev_split"]
        examples = mine(
            dataset_dir,
            config.mining,
            config.data.train_split,
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
            dataset_dir, examples, config.train, config.data.train_split, dev_split, data["fingerprint"], context
        )
        trained = evaluate(model_dir, "trained", dataset_dir, split, dev_split, config.eval, context)
        evaluations = [trained]
        bm25 = None
        if config.eval.baselines or config.promotion.mode == "hybrid":
            bm25 = evaluate(BM25, "bm25", dataset_dir, split, dev_split, config.eval, context, "bm25.")
            evaluations.append(hybrid(trained, bm25, dataset_dir, split, dev_split, config.eval, context))
        if config.eval.baselines:
            zero_shot = evaluate(
                base_model, "zero-shot", dataset_dir, split, dev_split, config.eval, context, "zeroshot."
            )
            evaluations.append(zero_shot)
            gains = {name: trained["metrics"][name] - zero_shot["metrics"][name] for name in SUMMARY_METRICS}
            log_metrics(run_id, gains, prefix="gain_over_zeroshot.")
        if bm25 is not None:
            evaluations.append(bm25)
        plot_recall(evaluations, context, f"recall@k on {split}")
        served = served_evaluation(evaluations, config.promotion.mode)
        version = register(
            model_dir,
            run_id,
            config.tracking.registered_model,
            served["metrics"],
            data["fingerprint"],
            registration_tags(evaluations, config.promotion.mode),
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
            )
        summary = {
            "mlflow_run_id": run_id,
            "registered_model": config.tracking.registered_model,
            "version": version,
            "dataset_fingerprint": data["fingerprint"],
            "dev_split": dev_split,
            "served_mode": config.promotion.mode,
            "metrics": {item["label"]: item["metrics"] for item in evaluations},
            "dev_metrics": {item["label"]: item["dev_metrics"] for item in evaluations if "dev_metrics" in item},
            "promotion": promotion,
        }
        if "weight" in served:
            summary["hybrid"] = {key: served[key] for key in ("weight", "method", "weight_chosen_by")}
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
        config.promotion.mode,
    )
    return summary


def served_evaluation(evaluations: list[dict], mode: str) -> dict:
    """The evaluation of the mode that will be served: the trained model alone, or its hybrid with BM25."""
    label = HYBRID if mode == "hybrid" else "trained"
    return next(item for item in evaluations if item["label"] == label)


def registration_tags(evaluations: list[dict], mode: str) -> dict[str, str]:
    """What serving needs to reproduce the registered figures, and the other systems' figures beside them."""
    tags = {"served.mode": mode}
    for item in evaluations:
        if item["label"] == HYBRID:
            tags |= {"hybrid.weight": f"{item['weight']:.4f}", "hybrid.method": item["method"]}
        if item["label"] in ("trained", HYBRID):
            tags |= {metric_key(name, f"{item['label']}."): f"{value:.6f}" for name, value in item["metrics"].items()}
    return tags


def summary_markdown(summary: dict, split: str) -> str:
    header = "| system | " + " | ".join(SUMMARY_METRICS) + " |"
    rule = "|---" * (len(SUMMARY_METRICS) + 1) + "|"
    rows = [
        f"| {label} | " + " | ".join(f"{metrics[name]:.4f}" for name in SUMMARY_METRICS) + " |"
        for label, metrics in summary["metrics"].items()
    ]
    return "\n".join(
        [
            f"# retrain: {summary['registered_model']} version {summary['version']}",
            "",
            f"MLflow run `{summary['mlflow_run_id']}`; dataset fingerprint `{summary['dataset_fingerprint']}`; "
            f"split `{split}`. Metric keys in MLflow: `{metric_key('ndcg@10')}` etc.",
            "",
            header,
            rule,
            *rows,
            "",
            *selection_markdown(summary),
            "",
            *promotion_markdown(summary["promotion"], summary.get("published")),
        ]
    )


def selection_markdown(summary: dict) -> list[str]:
    """Which split the choices were made on, and what will be served."""
    dev = summary.get("dev_split")
    lines = [
        f"Checkpoint and fusion weight chosen on split `{dev}`; `{summary.get('served_mode')}` is the served mode."
        if dev
        else "No dev split: the last checkpoint was kept and the hybrid uses the even mix."
    ]
    hybrid_settings = summary.get("hybrid")
    if hybrid_settings:
        lines += [
            "",
            f"Hybrid: {hybrid_settings['method']} fusion, dense weight {hybrid_settings['weight']:.2f} "
            f"({hybrid_settings['weight_chosen_by']}).",
        ]
    return lines


def promotion_markdown(promotion: dict, published: dict | None) -> list[str]:
    lines = [f"## promotion gate: **{promotion['decision']}**", "", promotion["reason"]]
    figures = [("candidate", promotion.get("candidate")), ("production", promotion.get("production_figure"))]
    rows = [
        f"| {role} | {item['version']} | {item['value']:.4f} | `{item['dataset_fingerprint']}` | "
        f"{'yes' if item['reevaluated'] else 'no'} |"
        for role, item in figures
        if item
    ]
    if rows:
        lines += [
            "",
            f"| role | version | {promotion['metric']} | dataset | re-evaluated here |",
            "|---|---|---|---|---|",
        ]
        lines += rows
        if promotion.get("delta") is not None:
            lines += ["", f"delta {promotion['delta']:+.4f}, margin {promotion['margin']:g}."]
    if promotion.get("production") is not None:
        lines += ["", f"`production` → version {promotion['production']}."]
    if published:
        lines += [
            "",
            f"Published index `{published['name']}` version `{published['version']}`, serving "
            f"`{published.get('mode')}` search by default.",
        ]
    return lines


def publish_target(config: RetrainConfig, promotion: dict, workspace: Path) -> str | None:
    """The version to publish now: the one this run promoted, else production when its index is missing.

    A crash between the gate's move and the publication (or a publication that failed) leaves production
    without an index; the next run repairs that instead of waiting for another promotion.
    """
    if promotion.get("promote"):
        return str(promotion["version"])
    production = promotion.get("production")
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
