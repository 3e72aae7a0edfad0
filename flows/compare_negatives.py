"""The ``compare_negatives`` flow: the study of negatives, one parent MLflow run and a child run per arm and seed.

Order only: ingest once; the plan (model/evaluation/compare_negatives/plan.py) lists the runs; each run is a subflow that
mines, trains and evaluates with the retrain tasks under its own child run; the report task compares them.
Caches make the arms cheap to share work: BM25 scores and the base model's corpus embeddings (teacher,
zero-shot, first dense round) are computed once, and a re-run of the study reuses every finished training
(tasks/train.py keys models by examples and settings).
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from denseflow.model.config import CompareNegativesConfig
from denseflow.model.context import RunContext, build_context
from denseflow.model.data.beir import RejectLog, load_beir
from denseflow.model.data.ingest import IngestedData
from denseflow.model.encoder import document_length, resolve_base_model
from denseflow.model.evaluation.compare_negatives.plan import (
    ArmResult,
    ArmSpec,
    estimate_study,
    plan_study,
    rounds_of,
    run_config,
    split_steps,
)
from denseflow.model.evaluation.compare_negatives.report import study_note
from denseflow.model.evaluation.evaluate import BM25
from denseflow.model.mining.negatives import MiningResult
from denseflow.model.workspace import workspace_dir
from denseflow.tasks.compare_negatives import mix, report, start_arm_run
from denseflow.tasks.evaluate import evaluate
from denseflow.tasks.ingest import ingest
from denseflow.tasks.mine import mine
from denseflow.tasks.tracking import configure_tracking, log_metrics, start_tracking_run, tracking_run
from denseflow.tasks.train import train


@flow(name="compare_negatives")
def compare_negatives(config: CompareNegativesConfig | None = None) -> dict:
    config = config or CompareNegativesConfig()
    logger = get_run_logger()
    workspace = workspace_dir(config.workspace)
    configure_tracking(config.tracking, workspace)
    parent_id = start_tracking_run(config, flow_run.id, config.run_name)
    run_dir = workspace / "runs" / parent_id
    specs = plan_study(config)
    started = time.perf_counter()
    with tracking_run(parent_id):
        data = ingest(config.data, run_dir, parent_id)
        # Documents are read at their own length, as retrain reads them (tasks/evaluate.py:choose_parts).
        document_max_seq_length = study_document_length(config, data, parent_id)
        estimate = estimate_study(
            config,
            data.documents,
            data.train_queries,
            data.eval_queries,
            specs,
            document_length=document_max_seq_length,
        )
        logger.info("study plan (%d runs):\n%s", len(specs), estimate.describe())
        if estimate.total_seconds > config.estimate.budget_minutes * 60:
            logger.warning(
                "estimate %.0f min exceeds the %.0f min budget",
                estimate.total_seconds / 60,
                config.estimate.budget_minutes,
            )
        log_metrics(parent_id, {"estimated_minutes": estimate.total_seconds / 60, "runs": len(specs)}, prefix="study.")
        runs = []
        for done, spec in enumerate(specs, start=1):
            runs.append(
                compare_negatives_arm.with_options(flow_run_name=spec.slug)(
                    spec, config, data, str(run_dir), parent_id, workspace, document_max_seq_length
                )
            )
            elapsed = time.perf_counter() - started
            logger.info(
                "[%d/%d] %s: recall@10 %.4f, ndcg@10 %.4f in %.1f min; elapsed %.1f min, about %.1f min left",
                done,
                len(specs),
                spec.slug,
                runs[-1].metrics["recall@10"],
                runs[-1].metrics["ndcg@10"],
                runs[-1].seconds / 60,
                elapsed / 60,
                estimate.remaining_seconds(done, elapsed) / 60,
            )
        minutes = (time.perf_counter() - started) / 60
        notes = [study_note(config, data, parent_id, minutes, document_max_seq_length)]
        split = config.data.eval_split
        title = f"negatives study: recall@k on {split}"
        summary = report(
            runs,
            run_dir / "report",
            parent_id,
            title,
            config.permutations,
            notes,
            data.dataset_dir,
            split,
            config.data.train_split,
            data.dev_split,
        )
        log_metrics(parent_id, {"wall_minutes": (time.perf_counter() - started) / 60}, prefix="study.")
    logger.info("negatives study done (MLflow run %s): %s", parent_id, summary.markdown)
    return {"mlflow_run_id": parent_id, "estimated_minutes": estimate.total_seconds / 60, **asdict(summary)}


@flow(name="compare_negatives_arm")
def compare_negatives_arm(
    spec: ArmSpec,
    config: CompareNegativesConfig,
    data: IngestedData,
    run_dir: str,
    parent_id: str,
    workspace: Path,
    document_max_seq_length: int | None = None,
) -> ArmResult:
    """One child run: (mine → train) × rounds → evaluate, for one arm, tower type, batch size and seed.

    ``data`` is what ingest returned (dataset folder, dev split, fingerprint). Training selects its best
    checkpoint on the dev split where there is one; each round after the first re-mines with the model the
    round before returned (that best checkpoint); the teacher stays the base model throughout.
    """
    run_id = start_arm_run(run_config(config, spec), spec, flow_run.id, parent_id)
    train_settings = spec.train_settings(config.train) if spec.trained else config.train
    context = build_context(workspace, run_id, config)
    context = replace(context, document_max_seq_length=document_max_seq_length)
    arm_dir = Path(run_dir) / "arms" / spec.slug
    dataset_dir, dev_split, split = data.dataset_dir, data.dev_split, config.data.eval_split
    # As in retrain: a dev split too small to choose on is reported, not chosen on.
    selection_split = data.selection_split(config.data.min_dev_queries)
    started = time.perf_counter()
    base_model = resolve_base_model(config.train.base_model)
    examples_paths: dict[str, str] = {}
    with tracking_run(run_id):
        if spec.arm == "zero-shot":
            target = base_model
        elif spec.arm == "bm25-alone":
            target = BM25
        else:
            target = base_model
            rounds = rounds_of(config, spec)
            for number, steps in enumerate(split_steps(config.train.max_steps, rounds), start=1):
                stage = f"round{number}." if rounds > 1 else ""
                examples = mine_round(spec, config, dataset_dir, arm_dir / f"round{number}", context, target, stage)
                examples_paths[stage.rstrip(".")] = examples.examples_path
                settings = train_settings.model_copy(update={"base_model": target, "max_steps": steps})
                target = train(
                    dataset_dir,
                    examples.examples_path,
                    settings,
                    config.data.train_split,
                    selection_split,
                    data.fingerprint,
                    context,
                    f"train.{stage}",
                )
                if number < rounds:  # cheap: re-mining already encoded the corpus with this model
                    evaluate(
                        target, f"{spec.slug}_round{number}", dataset_dir, split, None, config.eval, context, stage
                    )
        # The arms are compared on test; dev (which chose each model's checkpoint and α) is reported beside it.
        result = evaluate(
            target, spec.slug, dataset_dir, split, dev_split, config.eval, context, train_split=config.data.train_split
        )
        seconds = time.perf_counter() - started
        log_metrics(run_id, {"seconds": seconds}, prefix="study.")
    return ArmResult(
        spec=spec,
        run_id=run_id,
        metrics=result.metrics,
        recall_curve=result.recall_curve,
        per_query_path=str(context.run_dir / "evaluation" / f"per_query_{spec.slug}.json"),  # tasks/evaluate.py's
        run_path=result.run_file,
        examples_paths=examples_paths,
        seconds=seconds,
    )


def mine_round(
    spec: ArmSpec,
    config: CompareNegativesConfig,
    dataset_dir: str,
    round_dir: Path,
    context: RunContext,
    model_dir: str,
    stage: str,
) -> MiningResult:
    """``train_examples.jsonl`` of one round; dense candidates come from ``model_dir``, the round before's model.

    The teacher's ``base`` is the study's base model whatever the round, and its corpus embeddings are
    taken at the run's length and precision so the zero-shot evaluation reuses them.
    """
    mining = run_config(config, spec).mining
    splits = (config.data.train_split, config.data.eval_split)
    base_model = resolve_base_model(config.train.base_model)
    if spec.arm != "mix-hard":
        return mine(
            dataset_dir, mining, *splits, context, model_dir, base_model, round_dir, metric_prefix=f"mine.{stage}"
        )
    bm25_mining = mining.model_copy(update={"candidates": "bm25"})
    bm25 = mine(
        dataset_dir, bm25_mining, *splits, context, model_dir, base_model, round_dir / "bm25", f"mine.{stage}bm25."
    )
    dense = mine(
        dataset_dir, mining, *splits, context, model_dir, base_model, round_dir / "dense", f"mine.{stage}dense."
    )
    return mix(bm25, dense, config.mix_dense_share, spec.seed, round_dir, context.run_id, f"mine.{stage}")


def study_document_length(config: CompareNegativesConfig, data: IngestedData, parent_id: str) -> int:
    """The length every arm reads documents at: the base model's, capped by the corpus (model/encoder.py)."""
    dataset = load_beir(Path(data.dataset_dir), [], RejectLog())
    texts = [document.full_text for document in dataset.corpus.values()]
    length, reason = document_length(
        resolve_base_model(config.train.base_model), texts, config.eval.document_max_seq_length
    )
    get_run_logger().info("documents are read at %d tokens (%s)", length, reason)
    log_metrics(parent_id, {"document_max_seq_length": length}, prefix="study.")
    return length
