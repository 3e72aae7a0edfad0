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
from dataclasses import dataclass, field, replace
from pathlib import Path

from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient
from prefect import task

from denseflow.model.config import ChoicesConfig, EvalConfig, PromotionConfig
from denseflow.model.context import EvaluationData, RunContext
from denseflow.model.data.beir import RejectLog, load_beir
from denseflow.model.evaluation.compare import compare_systems, comparison_markdown
from denseflow.model.evaluation.evaluate import EvaluationResult, evaluate_system
from denseflow.model.evaluation.metrics import read_trec_run, write_trec_run
from denseflow.model.evaluation.runs import score_run
from denseflow.model.promotion import Decision, Evidence, GateOutcome, Scored, decide, paired_evidence
from denseflow.registry.aliases import ProductionChanged, move_production, now, production_lock, production_version
from denseflow.registry.keys import SERVED_MODE_TAG, metric_key
from denseflow.registry.resolve import resolve_model
from denseflow.registry.tags import served_fusion, served_record
from denseflow.tasks.registry import register
from denseflow.tasks.tracking import log_artifact, log_metrics, set_tags, set_version_tags, version_tags

EVAL_SPLIT_TAG = "eval_split"


def reevaluation_tag(fingerprint: str, split: str, mode: str = "dense") -> str:
    """Tag on a version holding its metrics (JSON) re-measured on another dataset and split, in one search mode."""
    return f"eval.{fingerprint}.{split}" if mode == "dense" else f"eval.{fingerprint}.{split}.{mode}"


def _production_figure(
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
        set_version_tags(
            production.name, str(production.version), {reevaluation_tag(fingerprint, split, mode): json.dumps(metrics)}
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
    per_query: PerQuery | None = None,
    choices: ChoicesConfig | None = None,
) -> GateOutcome:
    """Decide, record the decision, and move ``production`` when the candidate wins. Returns the outcome.

    ``base_metrics``: the base model's own system on the same data, in its served mode; the candidate must beat
    it too. Production is measured as it is served (its served-system record: mode, fusion, BM25, document length).
    With ``per_query`` figures, every win must also pass the paired tests (:func:`decide`); production is then
    re-evaluated on this run's data for its per-query figures.
    """
    choices = choices or ChoicesConfig()
    metric = settings.metric
    if metric not in candidate_metrics:
        raise ValueError(f"promotion.metric {metric!r} was not evaluated; available: {sorted(candidate_metrics)}")
    client = MlflowClient()
    version = str(version)
    set_version_tags(registered_model, version, {EVAL_SPLIT_TAG: data.split})
    (context.run_dir / "evaluation").mkdir(parents=True, exist_ok=True)
    reevaluate = ProductionOnThisRun(registered_model, data, eval_settings, context)
    candidate = Scored(version, float(candidate_metrics[metric]), data.fingerprint)
    base = Scored("base", float(base_metrics[metric]), data.fingerprint) if base_metrics else None
    with production_lock(registered_model, context.workspace):
        current = production_version(client, registered_model)
        production = None
        if current is not None:
            if per_query is not None:
                reevaluate(str(current.version))  # per-query figures for the paired test
            mode = current.tags.get(SERVED_MODE_TAG, "dense")
            production = _production_figure(current, metric, data.fingerprint, data.split, reevaluate, mode)
        evidence = gate_evidence(per_query, reevaluate.per_query, choices.permutations) if per_query else None
        decision = decide(candidate, production, metric, settings.margin, base, evidence, choices.alpha)
        moved, conflict = _move_if_promoted(client, registered_model, version, decision, current)
    return _record_outcome(client, registered_model, version, decision, production, moved, conflict, context)


@dataclass
class ProductionOnThisRun:
    """Production re-measured as it is served, on this run's data, once per gate: its metrics (its figure when the
    registered one came from other data) and its per-query nDCG@10 (the paired tests). Called with a version."""

    registered_model: str
    data: EvaluationData
    eval_settings: EvalConfig
    context: RunContext
    measured: dict[str, dict[str, float]] = field(default_factory=dict)
    per_query: dict[str, float] = field(default_factory=dict)

    def __call__(self, production: str) -> dict[str, float]:
        if production in self.measured:  # once per gate: the paired test and the figure share it
            return self.measured[production]
        context, split = self.context, self.data.split
        resolved = resolve_model(
            f"{self.registered_model}/{production}", context.workspace, default_name=self.registered_model
        )
        tags = version_tags(self.registered_model, production)
        record = served_record(tags)
        as_served = replace(
            context,
            max_seq_length=record.query_max_seq_length,
            document_max_seq_length=record.document_max_seq_length,
            bm25=record.bm25,
        )
        evaluation = evaluate_system(
            "production",
            str(resolved.local_dir),
            load_beir(Path(self.data.dataset_dir), [split], RejectLog()),
            split,
            as_served,
            self.eval_settings,
            served_fusion(tags, self.eval_settings),
        )
        self.per_query.update(evaluation.per_query.get("ndcg@10", {}))
        out_dir = context.run_dir / "evaluation"
        write_trec_run(evaluation.run, out_dir / "run_production.trec", tag="production")
        path = out_dir / "metrics_production.json"
        payload = {"label": "production", "version": production, "split": split, "metrics": evaluation.metrics}
        path.write_text(json.dumps(payload, indent=2))
        log_artifact(context.run_id, path, "evaluation")
        log_metrics(context.run_id, evaluation.metrics, prefix="production.")
        self.measured[production] = evaluation.metrics
        return evaluation.metrics


def _move_if_promoted(
    client: MlflowClient, registered_model: str, version: str, decision: Decision, current: ModelVersion | None
) -> tuple[dict | None, str | None]:
    """The alias move of a promotion, compare-and-set on the production the gate read; or why it stood down."""
    if not decision.promote:
        return None, None
    expected = str(current.version) if current else None
    try:
        return move_production(client, registered_model, version, "gate", decision.reason, expected=expected), None
    except ProductionChanged as err:
        return None, f"conflict: {err}"


def _record_outcome(
    client: MlflowClient,
    registered_model: str,
    version: str,
    decision: Decision,
    production: Scored | None,
    moved: dict | None,
    conflict: str | None,
    context: RunContext,
) -> GateOutcome:
    """The decision as tags on the candidate version and the run, ``promotion.json``, and the outcome."""
    tags = decision.as_tags()
    if conflict:
        tags |= {"promotion.decision": "conflict", "promotion.reason": conflict}
    at = now()
    tags |= {"promotion.at": at, "promotion.run_id": context.run_id}
    set_version_tags(registered_model, version, tags)
    set_tags(context.run_id, {key: tags[key] for key in ("promotion.decision", "promotion.reason")})
    if decision.delta is not None:
        log_metrics(context.run_id, {"promotion.delta": decision.delta})
    previous = production.version if production else None
    if moved:
        now_production = moved["production"]
    elif conflict:
        latest = production_version(client, registered_model)
        now_production = str(latest.version) if latest else previous
    else:
        now_production = previous
    result = GateOutcome.of(decision, version, now_production, previous, at)
    if conflict:
        result = replace(result, decision="conflict", reason=conflict)
    _write_outcome(result, context)
    return result


@dataclass(frozen=True)
class PerQuery:
    """Per-query nDCG@10 on the eval split of the candidate's and the base model's served systems, and the
    unseen-document queries among them: what the gate's paired tests compare."""

    candidate: dict[str, float]
    base: dict[str, float]
    unseen: tuple[str, ...] = ()


def gate_evidence(per_query: PerQuery, production: dict[str, float], permutations: int) -> dict[str, Evidence]:
    evidence = {"base": paired_evidence(per_query.candidate, per_query.base, per_query.unseen, permutations)}
    if production:
        evidence["production"] = paired_evidence(per_query.candidate, production, per_query.unseen, permutations)
        evidence["base_over_production"] = paired_evidence(per_query.base, production, per_query.unseen, permutations)
    return evidence


def _write_outcome(outcome: GateOutcome, context: RunContext) -> None:
    path = context.run_dir / "evaluation" / "promotion.json"
    path.write_text(json.dumps(outcome.as_dict(), indent=2))
    log_artifact(context.run_id, path)


@dataclass(frozen=True)
class BaseRelease:
    """The base model's own system as it ships when the gate says ``base model shipped``: registered only then, so
    a candidate that wins leaves no extra version. ``tags``: its registration tags (served-system record, figures)."""

    model_dir: str
    metrics: dict[str, float]
    dataset_fingerprint: str
    tags: dict[str, str]


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
    per_query: PerQuery | None = None,
    choices: ChoicesConfig | None = None,
    base_release: BaseRelease | None = None,
) -> GateOutcome:
    """The whole gate: decide and move ``production`` (:func:`run_gate`); when the base model's system won, register
    ``base_release`` and make it production (:func:`ship_base_model`). One outcome, whatever happened."""
    outcome = run_gate(
        version,
        candidate_metrics,
        data,
        settings,
        eval_settings,
        registered_model,
        context,
        base_metrics,
        per_query,
        choices,
    )
    if outcome.ship_base and base_release is not None:
        base_version = register(
            base_release.model_dir,
            context.run_id,
            registered_model,
            base_release.metrics,
            base_release.dataset_fingerprint,
            base_release.tags,
            artifact_name="base_model",
            alias=None,
        )
        outcome = ship_base_model(outcome, base_version, registered_model, context)
    return outcome


def ship_base_model(gate: GateOutcome, base_version: str, registered_model: str, context: RunContext) -> GateOutcome:
    """Make the registered base model production after a gate said ``ship_base``; compare-and-set on the
    production that gate read, so a move made meanwhile wins and this one stands down (``conflict``)."""
    client = MlflowClient()
    reason = f"base model's system ships: {gate.reason}"[:480]
    with production_lock(registered_model, context.workspace):
        try:
            moved = move_production(
                client, registered_model, base_version, "gate", reason, expected=gate.previous_production
            )
        except ProductionChanged as err:
            # Production is where the winner left it (the repair rule publishes it when its index is missing).
            result = replace(
                gate, decision="conflict", reason=f"conflict: {err}", base_version=base_version, production=err.found
            )
        else:
            result = replace(gate, production=moved["production"], base_version=base_version)
    set_version_tags(
        registered_model, base_version, {"promotion.decision": result.decision, "promotion.reason": result.reason}
    )
    _write_outcome(result, context)
    return result


@task(name="record-comparisons")
def record_comparisons(
    candidate: EvaluationResult,
    base: EvaluationResult,
    dataset_dir: Path,
    split: str,
    context: RunContext,
    permutations: int = 10_000,
) -> list[str]:
    """The gate's comparisons as ``denseflow compare`` writes them: the candidate against the base model's system,
    and against production when the gate re-evaluated it; ``compare_<other>.md`` / ``.json`` run artifacts."""
    dataset = load_beir(Path(dataset_dir), [split], RejectLog())
    queries = dataset.split_queries(split)
    titles = {doc_id: document.title for doc_id, document in dataset.corpus.items()}
    out_dir = context.run_dir / "evaluation"
    others = {"base": (base.test.per_query, read_trec_run(Path(base.run_file)))}
    production_run = out_dir / "run_production.trec"
    if production_run.is_file():
        run = read_trec_run(production_run)
        scored = score_run("production", run, dataset.qrels[split], [10])
        others["production"] = (scored.per_query["ndcg@10"], run)
    written = []
    for name, (per_query, run) in others.items():
        comparison = compare_systems(
            name,
            "candidate",
            per_query,
            candidate.test.per_query,
            run,
            read_trec_run(Path(candidate.run_file)),
            queries,
            candidate.test.unseen,
            titles,
            permutations=permutations,
        )
        path = out_dir / f"compare_{name}.md"
        path.write_text(comparison_markdown(comparison, f"{split} split of this run's data"), encoding="utf-8")
        path.with_suffix(".json").write_text(json.dumps(comparison.as_dict(), indent=2, default=str), encoding="utf-8")
        for item in (path, path.with_suffix(".json")):
            log_artifact(context.run_id, item, "promotion")
        written.append(str(path))
    return written
