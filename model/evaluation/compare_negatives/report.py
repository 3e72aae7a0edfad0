"""The negatives study's report: runs grouped by variant, mean ± std over seeds, paired tests, table and plots.

One row per *variant* (arm × tower type × batch size); its seeds are averaged. Every trained variant, and
the untrained ones, are tested against the random-negatives variant of the same tower type and batch size
(untrained arms against the first random variant) on each test query; see model/evaluation/stats.py.

*Where does it help*: hard negatives are meant to fix the queries where the positive sits among lexically
close distractors. Test queries are grouped by BM25's rank of their best-ranked positive (top 3, 4-20,
below 20 or not retrieved), and each hard arm's per-query wins and losses against random are counted per
group, with the mean nDCG@10 and recall@1 differences.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from denseflow.model.config import CompareNegativesConfig
from denseflow.model.data.ingest import IngestedData
from denseflow.model.evaluation.compare_negatives.plan import ArmSpec
from denseflow.model.evaluation.plots import plot_recall_curves
from denseflow.model.evaluation.stats import PairedTest, average_over_seeds, holm, mean_std, paired_test

BASELINE_ARM = "random"
TABLE_METRICS = ("recall@1", "recall@10", "recall@100", "ndcg@10", "mrr@10")
TEST_METRICS = ("recall@1", "recall@10", "ndcg@10")
GUARD_COLUMNS = (
    "examples",
    "removed_judged_positive",
    "removed_rank_window",
    "removed_teacher_margin",
    "removed_teacher_ceiling",
    "removed_miner_margin",
    "filled_examples",
    "negative_rank_mean",
    "teacher_ratio_mean",
)
# (label, CSV key, lowest rank, highest rank or None): BM25's rank of the best-ranked positive.
BM25_BUCKETS = (("top 3", "top3", 1, 3), ("4–20", "4to20", 4, 20), ("below 20", "below20", 21, None))
HELP_METRICS = ("ndcg@10", "recall@1")
# Mean count of training-positive documents in the top 10 of unseen-document test queries (attractors).
ATTRACTORS = "train_positives_in_top10_unseen"


@dataclass
class RunResult:
    """One child run: its spec, metrics, per-query values and what mining and training logged."""

    spec: ArmSpec
    run_id: str
    metrics: dict[str, float]
    per_query: dict[str, dict[str, float]]
    recall_curve: list[float]
    seconds: float
    train_seconds: float = 0.0
    mining: dict[str, float] = field(default_factory=dict)  # mine.* metrics, the "mine." prefix removed
    examples_paths: dict[str, str] = field(default_factory=dict)  # mining stage -> train_examples.jsonl


@dataclass
class VariantSummary:
    variant: str
    arm: str
    towers: str | None
    batch_size: int | None
    seeds: list[int | None]
    run_ids: list[str]
    metrics: dict[str, tuple[float, float]]  # mean, sample std over seeds
    per_query: dict[str, dict[str, float]]  # averaged over seeds
    recall_curve: list[float]  # mean over seeds
    seconds: float  # mean wall time of one run
    train_seconds: float
    mining: dict[str, float]  # mean over seeds
    baseline: str | None = None
    tests: dict[str, PairedTest] = field(default_factory=dict)
    p_holm: dict[str, float] = field(default_factory=dict)
    examples_paths: dict[str, list[str]] = field(default_factory=dict)  # mining stage -> one file per seed


def summarise_runs(
    results: Sequence[RunResult], permutations: int = 10_000, seed: int = 0, test_metrics: Sequence[str] = TEST_METRICS
) -> list[VariantSummary]:
    """Group runs by variant (plan order kept), average seeds, and test each variant against random negatives."""
    groups: dict[str, list[RunResult]] = {}
    for result in results:
        groups.setdefault(result.spec.variant, []).append(result)
    summaries = [_summarise_group(runs) for runs in groups.values()]
    randoms = [summary for summary in summaries if summary.arm == BASELINE_ARM]
    for summary in summaries:
        baseline = _baseline_for(summary, randoms)
        if baseline is None:
            continue
        summary.baseline = baseline.variant
        for metric in test_metrics:
            summary.tests[metric] = paired_test(
                summary.per_query[metric], baseline.per_query[metric], metric, permutations, seed
            )
    for metric in test_metrics:
        tested = [summary for summary in summaries if metric in summary.tests]
        for summary, adjusted in zip(tested, holm([s.tests[metric].p_value for s in tested]), strict=True):
            summary.p_holm[metric] = adjusted
    return summaries


def restrict_runs(results: Sequence[RunResult], queries: Sequence[str]) -> list[RunResult]:
    """The runs with their per-query values and metric means over ``queries`` only (a partition of test);
    metrics not measured per query (the attractor count) are kept as they are."""
    chosen = set(queries)
    restricted = []
    for result in results:
        per_query = {
            name: {query: value for query, value in values.items() if query in chosen}
            for name, values in result.per_query.items()
        }
        metrics = dict(result.metrics) | {
            name: float(np.mean(list(values.values()))) for name, values in per_query.items() if values
        }
        restricted.append(replace(result, per_query=per_query, metrics=metrics))
    return restricted


def _summarise_group(runs: list[RunResult]) -> VariantSummary:
    spec = runs[0].spec
    names = list(runs[0].metrics)
    mining_keys = sorted({key for run in runs for key in run.mining})
    return VariantSummary(
        variant=spec.variant,
        arm=spec.arm,
        towers=spec.towers,
        batch_size=spec.batch_size,
        seeds=[run.spec.seed for run in runs],
        run_ids=[run.run_id for run in runs],
        metrics={name: mean_std([run.metrics[name] for run in runs]) for name in names},
        per_query={name: average_over_seeds([run.per_query[name] for run in runs]) for name in runs[0].per_query},
        recall_curve=[float(x) for x in np.mean([run.recall_curve for run in runs], axis=0)],
        seconds=float(np.mean([run.seconds for run in runs])),
        train_seconds=float(np.mean([run.train_seconds for run in runs])),
        mining={key: float(np.mean([run.mining.get(key, 0.0) for run in runs])) for key in mining_keys},
        examples_paths={
            stage: [run.examples_paths[stage] for run in runs if stage in run.examples_paths]
            for stage in dict.fromkeys(stage for run in runs for stage in run.examples_paths)
        },
    )


def _baseline_for(summary: VariantSummary, randoms: list[VariantSummary]) -> VariantSummary | None:
    if summary.arm == BASELINE_ARM or not randoms:
        return None
    if summary.towers is None:
        return randoms[0]
    return next(
        (r for r in randoms if (r.towers, r.batch_size) == (summary.towers, summary.batch_size)),
        None,
    )


def _mean_std(value: tuple[float, float], runs: int) -> str:
    mean, std = value
    return f"{mean:.4f} ± {std:.4f}" if runs > 1 else f"{mean:.4f}"


def _difference(summary: VariantSummary, metric: str) -> str:
    test = summary.tests.get(metric)
    if test is None:
        return "baseline" if summary.arm == BASELINE_ARM else "–"
    star = "*" if summary.p_holm.get(metric, 1.0) < 0.05 else ""
    return f"{test.mean_difference:+.4f} (p={test.p_value:.3g}){star}"


def table_rows(summaries: Sequence[VariantSummary]) -> list[dict[str, str]]:
    """The comparison as rows of strings: the markdown table and the Prefect table artifact."""
    rows = []
    with_attractors = any(ATTRACTORS in summary.metrics for summary in summaries)
    for summary in summaries:
        runs = len(summary.seeds)
        row = {"arm": summary.variant, "seeds": str(runs)}
        row |= {name: _mean_std(summary.metrics[name], runs) for name in TABLE_METRICS if name in summary.metrics}
        row |= {f"Δ {name} vs random": _difference(summary, name) for name in TEST_METRICS}
        if with_attractors:
            value = summary.metrics.get(ATTRACTORS)
            row["train positives in top 10, unseen-doc"] = f"{value[0]:.2f}" if value else "–"
        row["train min"] = f"{summary.train_seconds / 60:.1f}" if summary.train_seconds else "–"
        row["run min"] = f"{summary.seconds / 60:.1f}"
        rows.append(row)
    return rows


def markdown_table(rows: Sequence[dict[str, str]]) -> str:
    if not rows:
        return ""
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row.get(name, "") for name in header) + " |" for row in rows]
    return "\n".join(lines)


def guard_rows(summaries: Sequence[VariantSummary]) -> list[dict[str, str]]:
    """What the miners did, per variant and mining stage (``round1``, ``round2.bm25`` ...), mean over seeds."""
    rows = []
    for summary in summaries:
        stages: dict[str, dict[str, float]] = {}
        for key, value in summary.mining.items():
            stage, _, name = key.rpartition(".")
            stages.setdefault(stage, {})[name] = value
        for stage, values in stages.items():
            row = {"arm": summary.variant, "stage": stage or "–"}
            row |= {name: f"{values[name]:.1f}" if name in values else "–" for name in GUARD_COLUMNS}
            rows.append(row)
    return rows


def comparison_markdown(
    summaries: Sequence[VariantSummary],
    title: str,
    notes: Sequence[str] = (),
    helps: Sequence[dict] = (),
    plots: dict[str, str] | None = None,
    partitions: Sequence[tuple[str, int, Sequence[VariantSummary], Sequence[dict]]] = (),
) -> str:
    """The report page; ``helps`` from :func:`where_it_helps`, ``plots`` maps a variant to its negatives plot,
    ``partitions`` holds (name, queries, summaries, helps) per seen-/unseen-document partition of test."""
    tested = next((s for s in summaries if s.tests), None)
    queries = next(iter(tested.tests.values())).queries if tested else 0
    lines = [
        f"# {title}",
        "",
        markdown_table(table_rows(summaries)),
        "",
        "Mean ± sample standard deviation over seeds. Δ: mean per-query difference against the random-negatives "
        "arm of the same tower type and batch size (untrained arms: against the first), per-query values "
        f"averaged over seeds first; p: paired two-sided randomisation test over {queries} test queries; "
        "* = significant at 0.05 after Holm's correction over the arms tested. train min: the training time "
        "recorded with the model (also when a re-run reused it); run min: this run's wall time.",
    ]
    for name, count, part_summaries, part_helps in partitions:
        label = "unseen-document" if name == "unseen_docs" else "seen-document"
        lines += [
            "",
            f"## On the {count} {label} test queries",
            "",
            "(no judged document shared with a train or dev query)"
            if name == "unseen_docs"
            else "(a judged document also judged for a train or dev query)",
            "",
            markdown_table(table_rows(part_summaries)),
        ]
        if part_helps:
            lines += [
                "",
                f"Where does it help, {label} queries:",
                "",
                markdown_table([_help_cells(r) for r in part_helps]),
            ]
    guards = guard_rows(summaries)
    if guards:
        lines += [
            "",
            "## What the negative miners did (mean per seed)",
            "",
            markdown_table(guards),
            "",
            "removed_*: candidates among the miner's top rank_end each filter dropped: judged positive, ranks up "
            "to rank_start, teacher score above margin × the teacher's score of the positive (teacher_margin), "
            "above max_similarity (teacher_ceiling), or the old rule on the miner's own score (miner_margin). "
            "filled_examples: examples with too few survivors, completed with random negatives. "
            "teacher_ratio_mean: the chosen negatives' teacher score over their positive's.",
        ]
    if helps:
        lines += [
            "",
            "## Where does it help? Per query, against random, by BM25's rank of the positive",
            "",
            markdown_table([_help_cells(row) for row in helps]),
            "",
            "Test queries grouped by the rank BM25 gives their best-ranked judged positive (below 20 includes "
            "not retrieved in its top 100). wins / losses / ties: queries where the arm's nDCG@10 (mean over "
            "seeds) is above / below / equal to random's; Δ: mean per-query difference.",
        ]
    if plots:
        lines += ["", "## The negatives each arm trained on", ""]
        lines += [f"![{variant}]({name})" for variant, name in plots.items()]
        lines += [
            "",
            "Left: the miner rank of each chosen negative; right: its teacher score over the teacher's score "
            "of its positive (1 = as close to the query as the positive). One line per mining round.",
        ]
    lines += [f"\n{note}" for note in notes]
    return "\n".join(lines) + "\n"


def bm25_positive_ranks(run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]]) -> dict[str, int | None]:
    """``{query: rank of its best-ranked judged positive in run}``; None when no positive was retrieved."""
    ranks: dict[str, int | None] = {}
    for query, judged in qrels.items():
        ranking = sorted(run.get(query, {}).items(), key=lambda item: (-item[1], item[0]))
        ranks[query] = next(
            (rank for rank, (doc, _) in enumerate(ranking, start=1) if judged.get(doc, 0) > 0),
            None,
        )
    return ranks


def bucket_of(rank: int | None) -> str:
    for label, _, low, high in BM25_BUCKETS:
        if rank is not None and rank >= low and (high is None or rank <= high):
            return label
    return BM25_BUCKETS[-1][0]  # not retrieved at all: the hardest case for BM25


def where_it_helps(summaries: Sequence[VariantSummary], positive_ranks: dict[str, int | None]) -> list[dict]:
    """Per trained arm tested against random and per BM25 bucket: queries, wins, losses, ties, mean differences."""
    by_variant = {s.variant: s for s in summaries}
    rows = []
    for summary in summaries:
        if summary.towers is None or summary.baseline is None:
            continue
        baseline = by_variant[summary.baseline]
        for label, key, _, _ in BM25_BUCKETS:
            queries = [q for q in summary.per_query[HELP_METRICS[0]] if bucket_of(positive_ranks.get(q)) == label]
            row: dict = {"variant": summary.variant, "baseline": baseline.variant, "bucket": label, "key": key}
            row["queries"] = len(queries)
            decisive = [summary.per_query[HELP_METRICS[0]][q] - baseline.per_query[HELP_METRICS[0]][q] for q in queries]
            row["wins"] = sum(d > 0 for d in decisive)
            row["losses"] = sum(d < 0 for d in decisive)
            row["ties"] = sum(d == 0 for d in decisive)
            for metric in HELP_METRICS:
                differences = [summary.per_query[metric][q] - baseline.per_query[metric][q] for q in queries]
                row[metric] = float(np.mean(differences)) if differences else None
            rows.append(row)
    return rows


def _help_cells(row: dict) -> dict[str, str]:
    cells = {"arm": row["variant"], "BM25 rank of positive": row["bucket"], "queries": str(row["queries"])}
    cells |= {"wins": str(row["wins"]), "losses": str(row["losses"]), "ties": str(row["ties"])}
    cells |= {f"Δ {metric}": f"{row[metric]:+.4f}" if row["queries"] else "–" for metric in HELP_METRICS}
    return cells


def write_csv(summaries: Sequence[VariantSummary], path: Path, helps: Sequence[dict] = ()) -> Path:
    """Every number, one row per variant: metric means and stds, tests, times, mining counts, and the
    where-does-it-help counts per BM25 bucket (``bm25_top3_wins`` ...)."""
    metric_names = sorted({name for s in summaries for name in s.metrics})
    mining_names = sorted({name for s in summaries for name in s.mining})
    header = ["variant", "arm", "towers", "batch_size", "seeds", "runs", "baseline"]
    header += [f"{name}_{part}" for name in metric_names for part in ("mean", "std")]
    for metric in TEST_METRICS:
        header += [
            f"{metric}_{part}" for part in ("difference", "p_randomisation", "p_holm", "p_ttest", "wins", "losses")
        ]
    header += ["train_seconds", "run_seconds", *[f"mine.{name}" for name in mining_names]]
    help_fields = ("queries", "wins", "losses", "ties", *HELP_METRICS)
    header += [f"bm25_{key}_{name}" for _, key, _, _ in BM25_BUCKETS for name in help_fields]
    help_by = {(row["variant"], row["key"]): row for row in helps}
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(header)
        for s in summaries:
            row: list = [
                s.variant,
                s.arm,
                s.towers or "",
                s.batch_size or "",
                " ".join(map(str, s.seeds)),
                len(s.seeds),
            ]
            row.append(s.baseline or "")
            for name in metric_names:
                row += [f"{value:.6f}" for value in s.metrics.get(name, (float("nan"), float("nan")))]
            for metric in TEST_METRICS:
                test = s.tests.get(metric)
                if test is None:
                    row += [""] * 6
                else:
                    row += [f"{test.mean_difference:.6f}", f"{test.p_value:.6g}", f"{s.p_holm[metric]:.6g}"]
                    row += [f"{test.p_ttest:.6g}", test.wins, test.losses]
            row += [f"{s.train_seconds:.1f}", f"{s.seconds:.1f}"]
            row += [f"{s.mining[name]:.4f}" if name in s.mining else "" for name in mining_names]
            for _, key, _, _ in BM25_BUCKETS:
                found = help_by.get((s.variant, key))
                row += [""] * len(help_fields) if found is None else [_csv_value(found[name]) for name in help_fields]
            writer.writerow(row)
    return path


def _csv_value(value: object) -> str:
    if value is None:
        return ""
    return f"{value:.6f}" if isinstance(value, float) else str(value)


def plot_study(summaries: Sequence[VariantSummary], path: Path, title: str) -> Path:
    """recall@k for k = 1..100, one line per arm (mean over its seeds)."""
    return plot_recall_curves({s.variant: s.recall_curve for s in summaries}, path, title)


@dataclass(frozen=True)
class StudyReport:
    """Where the study's report was written (markdown, CSV, recall@k plot) and its tables as rows."""

    markdown: str
    csv: str
    plot: str
    rows: list[dict]
    where_it_helps: list[dict]
    variants: list[dict]


def study_note(
    config: CompareNegativesConfig,
    data: IngestedData,
    parent_run_id: str,
    minutes: float,
    document_max_seq_length: int | None = None,
) -> str:
    """What every arm shared, under the table: data, steps, batch, rate, length, rounds, seeds, wall time."""
    documents_read_at = document_max_seq_length or config.train.max_seq_length
    train, mining = config.train, config.mining
    return (
        f"Data: {data.train_queries} train / {data.eval_queries} {config.data.eval_split} queries, "
        f"{data.documents} documents (fingerprint `{data.fingerprint}`). Every trained arm: "
        f"{train.max_steps} steps at batch {train.batch_size}, lr {train.learning_rate}, max_seq_length "
        f"{train.max_seq_length} (documents read at {documents_read_at} tokens, BM25 k1 {config.bm25.k1}, b {config.bm25.b}, stemmer {config.bm25.stemmer}); "
        f"re-mined arms split the steps over {config.dense_rounds} rounds, re-mining with "
        f"the round's best model. Hard arms: teacher `{mining.teacher}`, margin {mining.margin}, selection "
        f"`{mining.selection}`, {mining.num_negatives} negative(s) per pair from the top {mining.rank_end}; "
        f"bm25-old: BM25, margin on BM25's scores, sampled from ranks 4-50. Seeds {config.seeds}. MLflow "
        f"parent run `{parent_run_id}`; wall time {minutes:.1f} min."
    )
