"""The ``retrain`` flow: ingest → mine → train → evaluate → register → promotion gate → publish (when promoted).

Only the order of the stages lives here.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from denseflow.flows.publish_index import publish_config_for, run_publish
from denseflow.model.config import PRIOR_RECIPE, IndexConfig, RetrainConfig, TrainConfig
from denseflow.model.context import EvaluationData, RunContext, build_context
from denseflow.model.data.ingest import IngestedData
from denseflow.model.encoder import resolve_base_model
from denseflow.model.evaluation.choice import prior_only, read_choices
from denseflow.model.evaluation.evaluate import BM25, EvaluationResult
from denseflow.model.evaluation.served import EvaluatedSystems, ServedMode, served_system
from denseflow.model.evaluation.summary import gains, retrain_summary, summary_markdown
from denseflow.model.index.store import published_model_label
from denseflow.model.promotion import GateOutcome, publish_target
from denseflow.model.served_system import ServedSystem
from denseflow.model.training.shallow import check_query_layers, folder_query_depth
from denseflow.model.workspace import workspace_dir
from denseflow.registry.keys import BASE_MODEL_TAG, SERVED_SYSTEM_TAG
from denseflow.registry.tags import registration_tags
from denseflow.tasks.evaluate import (
    BASE_HYBRID,
    choose_parts,
    choose_query_layers,
    choose_recipe,
    evaluate,
    hybrid,
    plot_recall,
)
from denseflow.tasks.ingest import ingest
from denseflow.tasks.mine import mine
from denseflow.tasks.promotion import BaseRelease, PerQuery, promotion_gate, record_comparisons
from denseflow.tasks.registry import describe_version, register
from denseflow.tasks.tracking import (
    configure_tracking,
    log_choice,
    log_metrics,
    run_url,
    start_tracking_run,
    tracking_run,
)
from denseflow.tasks.train import distill_query_towers, train


@flow(name="retrain")
def retrain(config: RetrainConfig | None = None) -> dict:
    config = config or RetrainConfig()
    base_model = resolve_base_model(config.train.base_model)
    # Checked before anything runs: a depth past the model's is a setting error, not a failed run.
    if config.train.query_layers:
        check_query_layers(config.train.query_layers, folder_query_depth(base_model))
    workspace = workspace_dir(config.workspace)
    configure_tracking(config.tracking, workspace)
    run_id = start_tracking_run(config, flow_run.id, config.run_name)
    context = build_context(workspace, run_id, config)
    # The run covers publication: a run killed while publishing must not read FINISHED.
    with tracking_run(run_id):
        data = ingest(config.data, context.run_dir, run_id)
        selection_split = _selection_split(data, config)
        parts = choose_parts(
            data.dataset_dir,
            data.dev_split,
            selection_split is not None,
            config.bm25,
            config.eval,
            config.choices,
            base_model,
            context,
        )
        context = replace(context, bm25=parts.bm25, document_max_seq_length=parts.document_max_seq_length)
        mined = mine(
            data.dataset_dir,
            config.mining,
            config.data.train_split,
            config.data.eval_split,
            context,
            model_dir=base_model,
        )
        model_dir = _train_and_choose(config, data, selection_split, mined.examples_path, context)
        systems = _evaluate_systems(config, data, selection_split is not None, model_dir, base_model, context)
        version, base_release = _register(config, data, model_dir, base_model, systems, context)
        promotion = _gate(config, data, version, systems, base_release, context)
        summary = retrain_summary(
            run_id=run_id,
            run_url=run_url(run_id),
            registered_model=config.tracking.registered_model,
            version=version,
            data=data,
            selection_split=selection_split,
            served=systems.served,
            mode=systems.mode,
            mode_reason=systems.mode_reason,
            base_mode=systems.base_mode,
            evaluations=systems.evaluations,
            promotion=promotion,
            choices=read_choices(context.run_dir / "choices.jsonl"),
            parts=parts.as_dict(),
        )
        describe_version(version, model_dir, summary, context, mined.examples_path, config)
        published = _publish_if_promoted(config, promotion, data.dataset_dir, workspace)
        if published is not None:
            summary = replace(summary, published=published)
    result = summary.as_dict()
    split = config.data.eval_split
    create_markdown_artifact(markdown=summary_markdown(result, split), key="retrain-summary", description="retrain")
    get_run_logger().info(
        "registered %s version %s (MLflow run %s); served mode %s",
        config.tracking.registered_model,
        version,
        run_id,
        systems.mode,
    )
    return result


def _selection_split(data: IngestedData, config: RetrainConfig) -> str | None:
    """Dev, when it is large enough to choose on; a warning when it is not."""
    selection_split = data.selection_split(config.data.min_dev_queries)
    if data.dev_split and selection_split is None:
        get_run_logger().warning(
            "%d dev queries (< data.min_dev_queries %d): no choice is made on dev; documented priors are used",
            data.dev_queries,
            config.data.min_dev_queries,
        )
    return selection_split


def _train_and_choose(
    config: RetrainConfig, data: IngestedData, selection_split: str | None, examples_path: str, context: RunContext
) -> str:
    """Train the prior recipe (and, when dev is large enough, the freer ones), keep the recipe dev's paired test
    allows, then the query tower depth dev allows. Returns the model folder that is evaluated and registered."""
    train_split = config.data.train_split

    def trained(settings: TrainConfig, metric_prefix: str = "train.") -> str:
        return train(
            data.dataset_dir,
            examples_path,
            settings,
            train_split,
            selection_split,
            data.fingerprint,
            context,
            metric_prefix=metric_prefix,
        )

    model_dir = trained(config.train)
    # The recipe is a choice too: the conservative prior, unless a freer recipe wins on dev by the paired test.
    alternatives, why_none = config.choices.recipes_to_try(data.dev_queries, selection_split is not None)
    if alternatives:
        recipes = {PRIOR_RECIPE: model_dir} | {
            name: trained(config.recipe(name), f"recipe.{name}.train.") for name in alternatives
        }
        model_dir = choose_recipe(recipes, data.dataset_dir, selection_split, config.eval, config.choices, context)
    else:
        log_choice(context, prior_only("recipe", PRIOR_RECIPE, f"prior ({why_none})", config.choices.alpha))
    # A shallow query tower distilled onto the chosen one, when dev shows it serves as well (train.query_layers).
    towers = distill_query_towers(
        model_dir, data.dataset_dir, examples_path, config.train, train_split, data.fingerprint, context
    )
    return choose_query_layers(
        model_dir,
        towers,
        data.dataset_dir,
        config.data.eval_split,
        data.dev_split,
        selection_split is not None,
        config.train,
        config.eval,
        context,
        train_split,
    )


def _evaluate_systems(
    config: RetrainConfig, data: IngestedData, tune: bool, model_dir: str, base_model: str, context: RunContext
) -> EvaluatedSystems:
    """The trained model, BM25, their hybrid, and the base model's own system (what the gate must beat, so a
    retrain never ships worse than doing nothing); then which mode each model ships in."""
    train_split, choices = config.data.train_split, config.choices
    splits = dict(
        dataset_dir=data.dataset_dir,
        split=config.data.eval_split,
        dev_split=data.dev_split,
        settings=config.eval,
        context=context,
        train_split=train_split,
    )
    trained = evaluate(model_dir, "trained", **splits)
    bm25 = evaluate(BM25, "bm25", **splits, metric_prefix="bm25.")
    fused = hybrid(trained, bm25, **splits, tune_on_dev=tune, choices=choices)
    zero_shot = evaluate(base_model, "zero-shot", **splits, metric_prefix="zeroshot.")
    base_fused = hybrid(zero_shot, bm25, **splits, label=BASE_HYBRID, tune_on_dev=tune, choices=choices)
    log_metrics(context.run_id, gains(trained, zero_shot), prefix="gain_over_zeroshot.")
    configured, alpha, permutations = config.promotion.mode, choices.alpha, choices.permutations
    served, mode, mode_choice = served_system(trained, fused, configured, tune, alpha, permutations)
    base_served, base_mode, base_choice = served_system(zero_shot, base_fused, configured, tune, alpha, permutations)
    systems = EvaluatedSystems(
        trained=trained,
        fused=fused,
        zero_shot=zero_shot,
        base_fused=base_fused,
        bm25=bm25,
        served=served,
        mode=mode,
        mode_reason=mode_choice.reason,
        base_served=base_served,
        base_mode=base_mode,
        base_reason=base_choice.reason,
    )
    plot_recall(systems.evaluations, context, f"recall@k on {config.data.eval_split}")
    log_choice(context, mode_choice)
    log_choice(context, base_choice, prefix="zeroshot.")
    return systems


def _register(
    config: RetrainConfig,
    data: IngestedData,
    model_dir: str,
    base_model: str,
    systems: EvaluatedSystems,
    context: RunContext,
) -> tuple[str, BaseRelease]:
    """Register the trained model's served system; the base model's is prepared, registered only if the gate
    ships it."""
    record = served_record(systems.mode, systems.fused, config, context)
    base_record = served_record(systems.base_mode, systems.base_fused, config, context)
    version = register(
        model_dir,
        context.run_id,
        config.tracking.registered_model,
        systems.served.metrics,
        data.fingerprint,
        registration_tags(systems.served, systems.trained, systems.fused, systems.mode, systems.mode_reason)
        | {SERVED_SYSTEM_TAG: record.to_json()},
    )
    base_tags = registration_tags(
        systems.base_served, systems.zero_shot, systems.base_fused, systems.base_mode, systems.base_reason
    )
    base_release = BaseRelease(
        base_model,
        systems.base_served.metrics,
        data.fingerprint,
        base_tags | {BASE_MODEL_TAG: "true", SERVED_SYSTEM_TAG: base_record.to_json()},
    )
    return version, base_release


def _gate(
    config: RetrainConfig,
    data: IngestedData,
    version: str,
    systems: EvaluatedSystems,
    base_release: BaseRelease,
    context: RunContext,
) -> GateOutcome:
    """The promotion gate (when enabled), and the comparisons it rests on as reports."""
    if not config.promotion.enabled:
        return GateOutcome.skipped("promotion.enabled is false")
    split = config.data.eval_split
    served, base_served = systems.served, systems.base_served
    promotion = promotion_gate(
        version,
        served.metrics,
        EvaluationData(Path(data.dataset_dir), data.fingerprint, split),
        config.promotion,
        config.eval,
        config.tracking.registered_model,
        context,
        base_served.metrics,
        PerQuery(served.test.per_query, base_served.test.per_query, served.test.unseen),
        config.choices,
        base_release,
    )
    record_comparisons(served, base_served, data.dataset_dir, split, context, config.choices.permutations)
    return promotion


def _publish_if_promoted(
    config: RetrainConfig, promotion: GateOutcome, dataset_dir: str, workspace: Path
) -> dict | None:
    """Publish what production now is, when the gate moved it or the published index lags it
    (``promotion.publish_on_promotion``); the publication's summary, or None when nothing was published."""
    if not config.promotion.publish_on_promotion:
        return None
    registered_model = config.tracking.registered_model
    published = published_model_label(workspace / "indexes", IndexConfig().name)  # what retrain publishes
    target = publish_target(promotion, published, registered_model)
    if target is None:
        return None
    if target.repair:
        get_run_logger().warning(
            "production is %s@%s but the published index serves %s: publishing production again",
            registered_model,
            target.version,
            published or "nothing",
        )
    return publish_version_of(config, target.version, dataset_dir, workspace)


def served_record(
    mode: ServedMode, fused: EvaluationResult, config: RetrainConfig, context: RunContext
) -> ServedSystem:
    """The served-system record of a registered version: what publication and the gate rebuild it from."""
    fusion = fused.fusion
    return ServedSystem(
        mode=mode,
        fusion_method=fusion.method if fusion else config.eval.fusion,
        fusion_weight=fusion.weight if fusion else 0.5,
        bm25=context.bm25,
        query_max_seq_length=context.max_seq_length,
        document_max_seq_length=context.document_length,
    )


def publish_version_of(config: RetrainConfig, version: str, dataset_dir: str, workspace: Path) -> dict:
    """Publish this run's corpus encoded by ``version`` (the publish_index flow).

    Same sequence length as evaluation, so publication takes the corpus embeddings evaluation cached from the
    per-document cache (nothing is encoded again when the precision matches).
    """
    model = f"{config.tracking.registered_model}/{version}"
    publish_config = publish_config_for(workspace, Path(dataset_dir), model, config.tracking)
    summary = run_publish(publish_config).summary()
    keys = ("name", "version", "path", "documents", "documents_encoded", "documents_reused", "mode", "hybrid")
    return {key: summary[key] for key in keys}
