"""Tasks of the negatives study that the retrain stages do not cover: child runs, mixing, and the report.

Mining, training and evaluation are the retrain tasks themselves (tasks/mine.py, train.py, evaluate.py),
called per arm with the child run's id and a metric prefix per round.
"""

from __future__ import annotations

import json
from pathlib import Path

from mlflow.tracking import MlflowClient
from prefect import task
from prefect.artifacts import create_table_artifact

from denseflow.model.data.beir import RejectLog, load_beir
from denseflow.model.evaluation.compare_negatives.plan import ArmResult, ArmRunConfig, ArmSpec
from denseflow.model.evaluation.compare_negatives.report import (
    ATTRACTORS,
    RunResult,
    StudyReport,
    VariantSummary,
    bm25_positive_ranks,
    comparison_markdown,
    plot_study,
    restrict_runs,
    summarise_runs,
    table_rows,
    where_it_helps,
    write_csv,
)
from denseflow.model.evaluation.metrics import read_trec_run
from denseflow.model.evaluation.partition import (
    MIN_PARTITION_QUERIES,
    UNSEEN,
    attractor_count,
    judged_documents,
    seen_document_split,
)
from denseflow.model.evaluation.plots import plot_negatives
from denseflow.model.evaluation.runs import bm25_run
from denseflow.model.mining.negatives import MiningResult, mining_summary, mix_examples, read_examples, write_examples
from denseflow.tasks.tracking import log_artifact, log_metrics, set_tags, start_tracking_run


def start_arm_run(config: ArmRunConfig, spec: ArmSpec, flow_run_id: str | None, parent_run_id: str) -> str:
    """A child run of the study's parent run, with the arm's settings as params and its identity as tags."""
    run_id = start_tracking_run(config, flow_run_id, spec.slug, parent_run_id=parent_run_id)
    tags = {
        "study.arm": spec.arm,
        "study.variant": spec.variant,
        "study.seed": "none" if spec.seed is None else str(spec.seed),
        "towers": spec.towers or "none",
        "study.batch_size": "none" if spec.batch_size is None else str(spec.batch_size),
    }
    set_tags(run_id, tags)
    return run_id


@task(name="mix-negatives")
def mix(
    first: MiningResult,
    second: MiningResult,
    second_share: float,
    seed: int,
    out_dir: Path,
    run_id: str,
    metric_prefix: str = "mine.",
) -> MiningResult:
    """``train_examples.jsonl`` taking each negative from the second file with probability ``second_share``."""
    mixed, taken = mix_examples(
        read_examples(Path(first.examples_path)), read_examples(Path(second.examples_path)), second_share, seed
    )
    path = write_examples(mixed, Path(out_dir) / "train_examples.jsonl")
    counts = {"examples": len(mixed), "taken_first": taken["first"], "taken_second": taken["second"]}
    log_metrics(run_id, counts | dict(mining_summary(mixed)), prefix=metric_prefix)
    log_artifact(run_id, path)
    return MiningResult(str(path), len(mixed))


def _run_result(
    item: ArmResult, client: MlflowClient, unseen_queries: list[str], training_positives: set[str]
) -> RunResult:
    """A flow's per-run record, completed with what mining and training logged to its MLflow run and the
    attractor count of its unseen-document test queries."""
    logged = client.get_run(item.run_id).data.metrics
    # train.seconds, or train.round1.seconds + train.round2.seconds ... for the rounds of a dense arm
    train_seconds = sum(v for k, v in logged.items() if k.startswith("train.") and k.endswith(".seconds"))
    mining = {key.removeprefix("mine."): value for key, value in logged.items() if key.startswith("mine.")}
    per_query = json.loads(Path(item.per_query_path).read_text(encoding="utf-8"))
    metrics = dict(item.metrics)
    run_path = item.run_path
    if unseen_queries and run_path and Path(run_path).is_file():
        metrics[ATTRACTORS] = attractor_count(read_trec_run(Path(run_path)), unseen_queries, training_positives)
    return RunResult(
        spec=item.spec,
        run_id=item.run_id,
        metrics=metrics,
        per_query=per_query,
        recall_curve=item.recall_curve,
        seconds=item.seconds,
        train_seconds=train_seconds,
        mining=mining,
        examples_paths=item.examples_paths,
    )


def _bm25_ranks(runs: list[ArmResult], dataset_dir: Path, split: str) -> dict[str, int | None]:
    """BM25's rank of each test query's best positive: from the bm25-alone arm's run file, else computed."""
    dataset = load_beir(Path(dataset_dir), [split], RejectLog())
    run_path = next((item.run_path for item in runs if item.spec.arm == "bm25-alone"), None)
    run = read_trec_run(Path(run_path)) if run_path and Path(run_path).is_file() else bm25_run(dataset, split)
    return bm25_positive_ranks(run, dataset.qrels[split])


def _negatives_plots(summaries: list[VariantSummary], out_dir: Path) -> dict[str, str]:
    """One plot per trained variant: its chosen negatives per mining stage, seeds pooled."""
    plots = {}
    for summary in summaries:
        if not summary.examples_paths:
            continue
        series = {
            stage or "negatives": [example for path in paths for example in read_examples(Path(path))]
            for stage, paths in summary.examples_paths.items()
        }
        name = f"negatives_{summary.variant.replace('/', '_')}.png"
        plot_negatives(series, out_dir / name, f"{summary.variant}: chosen negatives")
        plots[summary.variant] = name
    return plots


@task(name="compare-negatives-report")
def report(
    runs: list[ArmResult],
    out_dir: Path,
    parent_run_id: str,
    title: str,
    permutations: int,
    notes: list[str],
    dataset_dir: Path,
    split: str,
    train_split: str = "train",
    dev_split: str | None = None,
) -> StudyReport:
    """Table (markdown, CSV), where-does-it-help counts, recall@k and negatives plots, per-variant metrics on
    the parent run; a Prefect table. Every table also per seen-/unseen-document partition of the test queries,
    with its own paired tests against random (Holm-corrected within the partition)."""
    client = MlflowClient()
    dataset = load_beir(Path(dataset_dir), [split, train_split] + ([dev_split] if dev_split else []), RejectLog())
    used = [dataset.qrels[train_split]] + ([dataset.qrels[dev_split]] if dev_split else [])
    parts = seen_document_split(dataset.qrels[split], used)
    training_positives = judged_documents([dataset.qrels[train_split]])
    results = [_run_result(item, client, parts[UNSEEN], training_positives) for item in runs]
    summaries = summarise_runs(results, permutations)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ranks = _bm25_ranks(runs, dataset_dir, split)
    helps = where_it_helps(summaries, ranks)
    plots = _negatives_plots(summaries, out_dir)
    partitions = []
    for name, queries in parts.items():
        if len(queries) < MIN_PARTITION_QUERIES:
            continue
        part_summaries = summarise_runs(restrict_runs(results, queries), permutations)
        part_helps = where_it_helps(part_summaries, ranks)
        partitions.append((name, len(queries), part_summaries, part_helps))
        write_csv(part_summaries, out_dir / f"comparison_{name}.csv", part_helps)
    markdown = comparison_markdown(summaries, title, notes, helps, plots, partitions)
    (out_dir / "comparison.md").write_text(markdown, encoding="utf-8")
    write_csv(summaries, out_dir / "comparison.csv", helps)
    plot_study(summaries, out_dir / "recall_at_k.png", title)
    details = [
        {
            "variant": s.variant,
            "baseline": s.baseline,
            "seeds": s.seeds,
            "run_ids": s.run_ids,
            "metrics": {name: {"mean": m, "std": sd} for name, (m, sd) in s.metrics.items()},
            "tests": {name: test.as_dict() | {"p_holm": s.p_holm[name]} for name, test in s.tests.items()},
            "train_seconds": s.train_seconds,
            "run_seconds": s.seconds,
            "mining": s.mining,
            "where_it_helps": [row for row in helps if row["variant"] == s.variant],
            "partitions": {
                name: {
                    "queries": count,
                    "metrics": {m: {"mean": v, "std": sd} for m, (v, sd) in ps.metrics.items()},
                    "tests": {m: t.as_dict() | {"p_holm": ps.p_holm[m]} for m, t in ps.tests.items()},
                    "where_it_helps": [row for row in ph if row["variant"] == s.variant],
                }
                for name, count, part, ph in partitions
                for ps in part
                if ps.variant == s.variant
            },
        }
        for s in summaries
    ]
    (out_dir / "comparison.json").write_text(json.dumps(details, indent=2), encoding="utf-8")
    log_artifact(parent_run_id, out_dir, "report")
    for s in summaries:
        slug = s.variant.replace("/", "_")
        values = {f"{name}.mean": mean for name, (mean, _) in s.metrics.items()}
        values |= {f"{name}.std": std for name, (_, std) in s.metrics.items()}
        values |= {f"{name}.diff_vs_random": test.mean_difference for name, test in s.tests.items()}
        values |= {f"{name}.p_vs_random": test.p_value for name, test in s.tests.items()}
        log_metrics(parent_run_id, values, prefix=f"{slug}.")
    rows = table_rows(summaries)
    create_table_artifact(table=rows, key="compare-negatives", description=f"{title} (MLflow run {parent_run_id})")
    return StudyReport(
        markdown=str(out_dir / "comparison.md"),
        csv=str(out_dir / "comparison.csv"),
        plot=str(out_dir / "recall_at_k.png"),
        rows=rows,
        where_it_helps=helps,
        variants=details,
    )
