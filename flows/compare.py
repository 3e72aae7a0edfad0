"""The ``compare`` flow: two systems (registered versions, aliases, or ``base``) evaluated as each is served, on the
same data, then compared query by query (model/evaluation/compare.py). ``denseflow compare A B`` runs it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from prefect import flow, get_run_logger

from denseflow.model.config import BM25Config, EvalConfig, RetrainConfig, TrackingConfig, TrainConfig
from denseflow.model.context import build_context
from denseflow.model.data.beir import RejectLog, bundled_scifact_dir, load_beir
from denseflow.model.encoder import document_length, resolve_base_model
from denseflow.model.evaluation.compare import (
    Comparison,
    ServedRanker,
    compare_systems,
    comparison_markdown,
    query_latency_ms,
)
from denseflow.model.evaluation.evaluate import Fusion, evaluate_system
from denseflow.model.evaluation.partition import UNSEEN, seen_document_split
from denseflow.model.served_system import ServedSystem
from denseflow.model.workspace import workspace_dir

BASE = "base"


def registry_reference(system: str, registered_model: str) -> str:
    """``3`` → ``retriever/3``, ``production`` → ``retriever@production``; full references pass through."""
    if "@" in system or "/" in system:
        return system
    return f"{registered_model}/{system}" if system.isdigit() else f"{registered_model}@{system}"


def resolve_system(system: str, registered_model: str, workspace: Path, texts: list[str]) -> tuple[str, ServedSystem]:
    """The model folder of ``system`` and how it is served (``base``: the untrained model with the field's priors)."""
    if system == BASE:
        model_dir = resolve_base_model(None)
        length, _ = document_length(model_dir, texts)
        prior = ServedSystem("hybrid", "convex", 0.5, BM25Config().settings(), TrainConfig().max_seq_length, length)
        return model_dir, prior
    from denseflow.registry.resolve import resolve_model
    from denseflow.registry.tags import served_record
    from denseflow.tasks.tracking import version_tags

    resolved = resolve_model(registry_reference(system, registered_model), workspace, default_name=registered_model)
    tags = version_tags(resolved.name, resolved.version)
    return str(resolved.local_dir), served_record(tags)


def comparison_data(systems: list[str], registered_model: str, workspace: Path, data: Path | None) -> tuple[Path, str]:
    """``data``, else the dataset the first registered system was trained on, else the bundled SciFact."""
    if data is not None:
        return Path(data), str(data)
    from denseflow.registry.resolve import resolve_model, trained_dataset_dir

    for system in systems:
        if system == BASE:
            continue
        resolved = resolve_model(registry_reference(system, registered_model), workspace, default_name=registered_model)
        folder, why = trained_dataset_dir(resolved.name, resolved.version, workspace)
        if folder is not None:
            return folder, why
    return Path(bundled_scifact_dir()), "the bundled SciFact"


@flow(name="compare")
def compare(
    system_a: str,
    system_b: str,
    workspace: Path | None = None,
    data: Path | None = None,
    split: str = "test",
    train_split: str = "train",
    dev_split: str = "dev",
    queries_file: Path | None = None,
    tracking: TrackingConfig | None = None,
) -> dict:
    """Evaluate both systems as served on the same data and compare them; writes ``compare.md``, ``compare.html``
    and ``compare.json`` under ``<workspace>/compare/`` and logs them to an MLflow run (experiment ``compare``)."""
    from denseflow.tasks.tracking import configure_tracking

    tracking = tracking or TrackingConfig()
    workspace = workspace_dir(workspace)
    configure_tracking(tracking, workspace)
    registered_model = tracking.registered_model
    folder, data_label = comparison_data([system_b, system_a], registered_model, workspace, data)
    # The partition is against every judged split a version trained or chose on (train and dev), as retrain's.
    used = [name for name in (train_split, dev_split) if (folder / "qrels" / f"{name}.tsv").is_file()]
    splits = [split, *used]
    dataset = load_beir(folder, splits, RejectLog())
    texts = [document.full_text for document in dataset.corpus.values()]
    settings = EvalConfig()
    base_context = build_context(workspace, "compare", RetrainConfig())
    queries = dataset.split_queries(split)
    if queries_file is not None:
        lines = Path(queries_file).read_text(encoding="utf-8").splitlines()
        queries = {f"file-{i}": line.strip() for i, line in enumerate(lines) if line.strip()}
    evaluations, runs, latency = {}, {}, {}
    for label, system in (("a", system_a), ("b", system_b)):
        model_dir, served = resolve_system(system, registered_model, workspace, texts)
        context = replace(
            base_context,
            max_seq_length=served.query_max_seq_length,
            document_max_seq_length=served.document_max_seq_length,
            bm25=served.bm25,
        )
        fusion = Fusion(served.fusion_weight, served.fusion_method) if served.mode == "hybrid" else None  # type: ignore[arg-type]
        evaluation = evaluate_system(system, model_dir, dataset, split, context, settings, fusion)
        evaluations[label] = evaluation
        ranker = ServedRanker(model_dir, dataset.corpus, context, fusion)  # built once: file queries and latency
        runs[label] = evaluation.run if queries_file is None else {q: ranker.rank(text) for q, text in queries.items()}
        latency[system] = query_latency_ms(ranker.rank, list(queries.values()))
        get_run_logger().info("%s: nDCG@10 %.4f on %s (%s)", system, evaluation.metrics["ndcg@10"], split, served.mode)
    unseen = seen_document_split(dataset.qrels[split], [dataset.qrels[name] for name in used])[UNSEEN] if used else []
    titles = {doc_id: document.title for doc_id, document in dataset.corpus.items()}
    comparison = compare_systems(
        system_a,
        system_b,
        evaluations["a"].per_query["ndcg@10"],
        evaluations["b"].per_query["ndcg@10"],
        runs["a"],
        runs["b"],
        queries,
        unseen,
        titles,
        latency,
    )
    return record_comparison(comparison, data_label, workspace, tracking, evaluations)


def record_comparison(
    comparison: Comparison, data_label: str, workspace: Path, tracking: TrackingConfig, evaluations: dict
) -> dict:
    from denseflow.tasks.tracking import end_tracking_run, log_artifact, log_metrics, start_record_run

    out = workspace / "compare" / f"{comparison.label_a}-vs-{comparison.label_b}".replace("/", "_").replace("@", "_")
    out.mkdir(parents=True, exist_ok=True)
    markdown = comparison_markdown(comparison, data_label)
    (out / "compare.md").write_text(markdown, encoding="utf-8")
    (out / "compare.html").write_text(_html(markdown), encoding="utf-8")
    result = comparison.as_dict() | {
        "data": data_label,
        "ndcg@10": {
            comparison.label_a: evaluations["a"].metrics["ndcg@10"],
            comparison.label_b: evaluations["b"].metrics["ndcg@10"],
        },
        "folder": str(out),
    }
    (out / "compare.json").write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    run_id = start_record_run("compare", f"{comparison.label_b} vs {comparison.label_a}")
    for name in ("compare.md", "compare.html", "compare.json"):
        log_artifact(run_id, out / name)
    if comparison.all_queries is not None:
        figures = {
            "delta_ndcg_at_10": comparison.all_queries.mean_difference,
            "p_value": comparison.all_queries.p_value,
        }
        log_metrics(run_id, figures)
    end_tracking_run(run_id)
    return result | {"mlflow_run_id": run_id}


def _html(markdown: str) -> str:
    """A standalone page of the report (tables rendered by the markdown package when installed, else preformatted)."""
    import html

    try:
        import markdown as markdown_lib  # MLflow's UI dependency; present wherever MLflow is

        body = markdown_lib.markdown(markdown, extensions=["tables"])
    except ImportError:
        body = f"<pre>{html.escape(markdown)}</pre>"
    return f"<!doctype html><meta charset='utf-8'><title>compare</title><body>{body}</body>"
