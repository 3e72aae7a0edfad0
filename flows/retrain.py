"""The ``retrain`` flow: ingest → mine → train → evaluate → register → promotion gate → publish (when promoted).

Only the order of the stages lives here.
"""

from __future__ import annotations

from pathlib import Path

from denseflow.flows.publish_index import publish_config_for, run_publish
from denseflow.model.config import RetrainConfig
from denseflow.model.encoder import resolve_base_model
from denseflow.model.workspace import workspace_dir
from denseflow.tasks.evaluate import BM25, evaluate, plot_recall
from denseflow.tasks.ingest import ingest
from denseflow.tasks.mine import mine
from denseflow.tasks.promotion import promotion_gate
from denseflow.tasks.registry import register
from denseflow.tasks.tracking import configure_tracking, end_tracking_run, log_metrics, metric_key, start_tracking_run
from denseflow.tasks.train import train
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

SUMMARY_METRICS = ("ndcg@10", "mrr@10", "recall@1", "recall@10", "recall@100")


@flow(name="retrain")
def retrain(config: RetrainConfig | None = None) -> dict:
    config = config or RetrainConfig()
    workspace = workspace_dir(config.workspace)
    configure_tracking(config.tracking, workspace)
    run_id = start_tracking_run(config, flow_run.id, config.run_name)
    run_dir = workspace / "runs" / run_id
    cache_dir = workspace / "cache" / "embeddings"
    base_model = resolve_base_model(config.train.base_model)
    seq = config.train.max_seq_length
    try:
        data = ingest(config.data, run_dir, run_id)
        examples = mine(
            data["dataset_dir"],
            config.mining,
            config.data.train_split,
            config.data.eval_split,
            run_dir,
            run_id,
            cache_dir,
            model_dir=base_model,
            max_seq_length=seq,
        )
        model_dir = train(data["dataset_dir"], examples, config.train, config.data.train_split, workspace, run_id)
        split, out = config.data.eval_split, run_dir / "evaluation"
        evaluations = [
            evaluate(model_dir, "trained", data["dataset_dir"], split, config.eval, seq, out, cache_dir, run_id)
        ]
        if config.eval.baselines:
            evaluations += [
                evaluate(
                    base_model,
                    "zero-shot",
                    data["dataset_dir"],
                    split,
                    config.eval,
                    seq,
                    out,
                    cache_dir,
                    run_id,
                    "zeroshot.",
                ),
                evaluate(BM25, "bm25", data["dataset_dir"], split, config.eval, seq, out, cache_dir, run_id, "bm25."),
            ]
            gains = {
                name: evaluations[0]["metrics"][name] - evaluations[1]["metrics"][name] for name in SUMMARY_METRICS
            }
            log_metrics(run_id, gains, prefix="gain_over_zeroshot.")
        plot_recall(evaluations, out, run_id, f"recall@k on {split}")
        trained_metrics = evaluations[0]["metrics"]
        version = register(model_dir, run_id, config.tracking.registered_model, trained_metrics, data["fingerprint"])
        promotion = {"decision": "skipped", "promote": False, "reason": "promotion.enabled is false"}
        if config.promotion.enabled:
            promotion = promotion_gate(
                version,
                config.tracking.registered_model,
                config.promotion,
                trained_metrics,
                data["fingerprint"],
                data["dataset_dir"],
                split,
                config.eval,
                seq,
                out,
                cache_dir,
                run_id,
                workspace,
            )
    except BaseException:
        end_tracking_run(run_id, "FAILED")
        raise
    end_tracking_run(run_id)
    summary = {
        "mlflow_run_id": run_id,
        "registered_model": config.tracking.registered_model,
        "version": version,
        "dataset_fingerprint": data["fingerprint"],
        "metrics": {item["label"]: item["metrics"] for item in evaluations},
        "promotion": promotion,
    }
    if promotion["promote"] and config.promotion.publish_on_promotion:
        summary["published"] = publish_promoted(config, version, data["dataset_dir"], workspace)
    create_markdown_artifact(markdown=summary_markdown(summary, split), key="retrain-summary", description="retrain")
    get_run_logger().info("registered %s version %s (MLflow run %s)", summary["registered_model"], version, run_id)
    return summary


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
            *promotion_markdown(summary["promotion"], summary.get("published")),
        ]
    )


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
        lines += ["", f"Published index `{published['name']}` version `{published['version']}`."]
    return lines


def publish_promoted(config: RetrainConfig, version: str, dataset_dir: str, workspace: Path) -> dict:
    """Publish this run's corpus encoded by the promoted version (the publish_index flow).

    Same sequence length as evaluation, so publication reuses the corpus embeddings evaluation cached.
    """
    model = f"{config.tracking.registered_model}/{version}"
    publish_config = publish_config_for(
        workspace, Path(dataset_dir), model, config.tracking, config.train.max_seq_length
    )
    result = run_publish(publish_config)
    return {key: result[key] for key in ("name", "version", "path", "documents", "shards", "shards_reused")}
