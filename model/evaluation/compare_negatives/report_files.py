"""The negatives study's report files, from the arms' results: comparison.md / .csv / .json, one CSV per
seen-/unseen-document partition, the recall@k plot and one negatives plot per trained variant.

The report task (tasks/compare_negatives.py) reads what the arms logged to MLflow and hands it here; nothing in
this module talks to a tracking server.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from denseflow.model.data.beir import Dataset
from denseflow.model.evaluation.compare_negatives.plan import ArmResult
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
from denseflow.model.mining.negatives import read_examples


@dataclass(frozen=True)
class PartitionReport:
    """One seen-/unseen-document partition of the test queries: its variants tested within it."""

    name: str
    queries: int
    summaries: list[VariantSummary]
    helps: list[dict]


def run_result(
    item: ArmResult, logged: Mapping[str, float], unseen_queries: Sequence[str], training_positives: set[str]
) -> RunResult:
    """A flow's per-run record, completed with what mining and training logged to its MLflow run (``logged``)
    and the attractor count of its unseen-document test queries."""
    # train.seconds, or train.round1.seconds + train.round2.seconds ... for the rounds of a dense arm
    train_seconds = sum(v for k, v in logged.items() if k.startswith("train.") and k.endswith(".seconds"))
    mining = {key.removeprefix("mine."): value for key, value in logged.items() if key.startswith("mine.")}
    per_query = json.loads(Path(item.per_query_path).read_text(encoding="utf-8"))
    metrics = dict(item.metrics)
    run_path = item.run_path
    if unseen_queries and run_path and Path(run_path).is_file():
        metrics[ATTRACTORS] = attractor_count(read_trec_run(Path(run_path)), list(unseen_queries), training_positives)
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


def bm25_ranks(runs: Sequence[ArmResult], dataset: Dataset, split: str) -> dict[str, int | None]:
    """BM25's rank of each test query's best positive: from the bm25-alone arm's run file, else computed."""
    run_path = next((item.run_path for item in runs if item.spec.arm == "bm25-alone"), None)
    run = read_trec_run(Path(run_path)) if run_path and Path(run_path).is_file() else bm25_run(dataset, split)
    return bm25_positive_ranks(run, dataset.qrels[split])


def negatives_plots(summaries: Sequence[VariantSummary], out_dir: Path) -> dict[str, str]:
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


def _figures(summary: VariantSummary) -> dict:
    return {
        "metrics": {name: {"mean": mean, "std": std} for name, (mean, std) in summary.metrics.items()},
        "tests": {name: test.as_dict() | {"p_holm": summary.p_holm[name]} for name, test in summary.tests.items()},
    }


def variant_details(
    summaries: Sequence[VariantSummary], helps: Sequence[dict], partitions: Sequence[PartitionReport]
) -> list[dict]:
    """comparison.json: per variant its runs, figures, paired tests, mining, where it helps, and the same per
    partition."""
    details = []
    for summary in summaries:
        in_partitions = {
            part.name: {"queries": part.queries}
            | _figures(within)
            | {"where_it_helps": [row for row in part.helps if row["variant"] == summary.variant]}
            for part in partitions
            for within in part.summaries
            if within.variant == summary.variant
        }
        details.append(
            {
                "variant": summary.variant,
                "baseline": summary.baseline,
                "seeds": summary.seeds,
                "run_ids": summary.run_ids,
            }
            | _figures(summary)
            | {
                "train_seconds": summary.train_seconds,
                "run_seconds": summary.seconds,
                "mining": summary.mining,
                "where_it_helps": [row for row in helps if row["variant"] == summary.variant],
                "partitions": in_partitions,
            }
        )
    return details


def variant_metrics(summary: VariantSummary) -> dict[str, float]:
    """A variant's figures as the parent run's metrics: mean, std, difference from random and its p-value."""
    values = {f"{name}.mean": mean for name, (mean, _) in summary.metrics.items()}
    values |= {f"{name}.std": std for name, (_, std) in summary.metrics.items()}
    values |= {f"{name}.diff_vs_random": test.mean_difference for name, test in summary.tests.items()}
    values |= {f"{name}.p_vs_random": test.p_value for name, test in summary.tests.items()}
    return values


def write_report(
    runs: Sequence[ArmResult],
    logged: Mapping[str, Mapping[str, float]],
    dataset: Dataset,
    split: str,
    train_split: str,
    dev_split: str | None,
    out_dir: Path,
    title: str,
    notes: Sequence[str],
    permutations: int,
) -> tuple[StudyReport, list[VariantSummary]]:
    """Every report file of the study under ``out_dir``, from the arms' results and what each logged (``logged``
    by run id). Every table also per seen-/unseen-document partition of the test queries, with its own paired
    tests against random (Holm-corrected within the partition)."""
    used = [dataset.qrels[train_split]] + ([dataset.qrels[dev_split]] if dev_split else [])
    parts = seen_document_split(dataset.qrels[split], used)
    training_positives = judged_documents([dataset.qrels[train_split]])
    results = [run_result(item, logged[item.run_id], parts[UNSEEN], training_positives) for item in runs]
    summaries = summarise_runs(results, permutations)
    out_dir.mkdir(parents=True, exist_ok=True)
    ranks = bm25_ranks(runs, dataset, split)
    helps = where_it_helps(summaries, ranks)
    plots = negatives_plots(summaries, out_dir)
    partitions = []
    for name, queries in parts.items():
        if len(queries) < MIN_PARTITION_QUERIES:
            continue
        part_summaries = summarise_runs(restrict_runs(results, queries), permutations)
        part = PartitionReport(name, len(queries), part_summaries, where_it_helps(part_summaries, ranks))
        partitions.append(part)
        write_csv(part.summaries, out_dir / f"comparison_{name}.csv", part.helps)
    markdown = comparison_markdown(
        summaries,
        title,
        notes,
        helps,
        plots,
        [(part.name, part.queries, part.summaries, part.helps) for part in partitions],
    )
    (out_dir / "comparison.md").write_text(markdown, encoding="utf-8")
    write_csv(summaries, out_dir / "comparison.csv", helps)
    plot_study(summaries, out_dir / "recall_at_k.png", title)
    details = variant_details(summaries, helps, partitions)
    (out_dir / "comparison.json").write_text(json.dumps(details, indent=2), encoding="utf-8")
    report = StudyReport(
        markdown=str(out_dir / "comparison.md"),
        csv=str(out_dir / "comparison.csv"),
        plot=str(out_dir / "recall_at_k.png"),
        rows=table_rows(summaries),
        where_it_helps=helps,
        variants=details,
    )
    return report, summaries
