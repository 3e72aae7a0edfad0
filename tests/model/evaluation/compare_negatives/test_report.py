"""The study report: variants averaged over seeds, tests against random negatives, markdown, CSV and plot."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from denseflow.model.evaluation.compare_negatives.plan import ArmSpec
from denseflow.model.evaluation.compare_negatives.report import (
    RunResult,
    bm25_positive_ranks,
    bucket_of,
    comparison_markdown,
    guard_rows,
    plot_study,
    summarise_runs,
    table_rows,
    where_it_helps,
    write_csv,
)

QUERIES = [f"q{i}" for i in range(60)]


def run(arm: str, seed: int | None, hit_rate: float, towers: str | None = "siamese", mining=None) -> RunResult:
    rng = np.random.default_rng(seed if seed is not None else 99)
    recall = {q: float(rng.random() < hit_rate) for q in QUERIES}
    ndcg = {q: value * 0.7 for q, value in recall.items()}
    per_query = {"recall@10": recall, "ndcg@10": ndcg, "recall@1": ndcg, "recall@100": recall, "mrr@10": ndcg}
    metrics = {name: float(np.mean(list(values.values()))) for name, values in per_query.items()}
    spec = ArmSpec(arm, towers, 32 if towers else None, seed)
    curve = list(np.linspace(metrics["recall@1"], metrics["recall@100"], 100))
    return RunResult(spec, f"id-{spec.slug}", metrics, per_query, curve, 60.0, 30.0, mining or {})


@pytest.fixture()
def summaries():
    guards = {"examples": 919, "removed_judged_positive": 10, "removed_rank_window": 2757}
    rounds = {"round1.removed_rank_window": 2000, "round2.removed_rank_window": 2500, "round2.examples": 919}
    results = [
        run("zero-shot", None, 0.5, towers=None),
        run("random", 0, 0.5),
        run("bm25-hard", 0, 0.95, mining=guards),
        run("dense-hard", 0, 0.5, mining=rounds),
        run("random", 1, 0.5),
        run("bm25-hard", 1, 0.95, mining=guards | {"removed_rank_window": 2759}),
        run("dense-hard", 1, 0.5, mining=rounds),
    ]
    return summarise_runs(results, permutations=500)


def test_variants_average_seeds_and_test_against_random(summaries):
    by_variant = {s.variant: s for s in summaries}
    assert list(by_variant) == ["zero-shot", "random/siamese", "bm25-hard/siamese", "dense-hard/siamese"]
    bm25 = by_variant["bm25-hard/siamese"]
    assert bm25.seeds == [0, 1]
    assert bm25.baseline == "random/siamese"
    assert by_variant["zero-shot"].baseline == "random/siamese"
    assert by_variant["random/siamese"].baseline is None
    assert not by_variant["random/siamese"].tests
    mean, std = bm25.metrics["recall@10"]
    assert mean == pytest.approx(np.mean([r for r in bm25.per_query["recall@10"].values()]))
    assert std > 0
    assert bm25.tests["recall@10"].p_value < 0.01
    assert bm25.tests["recall@10"].mean_difference > 0.3
    assert bm25.p_holm["recall@10"] >= bm25.tests["recall@10"].p_value
    assert bm25.mining["removed_rank_window"] == 2758


def test_table_markdown_csv_and_plot(summaries, tmp_path):
    rows = table_rows(summaries)
    assert rows[2]["arm"] == "bm25-hard/siamese"
    assert rows[2]["seeds"] == "2"
    assert "±" in rows[2]["recall@10"]
    assert "±" not in rows[0]["recall@10"]  # one deterministic run: no spread
    assert rows[1]["Δ recall@10 vs random"] == "baseline"
    assert rows[2]["Δ recall@10 vs random"].startswith("+")
    assert rows[2]["Δ recall@10 vs random"].endswith("*")
    markdown = comparison_markdown(summaries, "study", ["note one"])
    assert "| bm25-hard/siamese | 2 |" in markdown
    assert "over 60 test queries" in markdown
    assert "note one" in markdown
    stages = {(row["arm"], row["stage"]): row for row in guard_rows(summaries)}
    assert stages[("bm25-hard/siamese", "–")]["removed_rank_window"] == "2758.0"
    assert stages[("dense-hard/siamese", "round2")]["examples"] == "919.0"
    path = write_csv(summaries, tmp_path / "comparison.csv")
    table = {row["variant"]: row for row in csv.DictReader(path.open())}
    assert float(table["bm25-hard/siamese"]["recall@10_p_randomisation"]) < 0.01
    assert table["random/siamese"]["recall@10_difference"] == ""
    assert float(table["dense-hard/siamese"]["mine.round1.removed_rank_window"]) == 2000
    png = plot_study(summaries, tmp_path / "recall.png", "study")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bm25_rank_of_the_best_positive_and_its_bucket():
    run = {"a": {"d1": 3.0, "d2": 2.0, "d3": 1.0}, "b": {"d1": 1.0}, "c": {}}
    qrels = {"a": {"d3": 1, "d2": 1}, "b": {"d9": 1}, "c": {"d1": 1}}
    assert bm25_positive_ranks(run, qrels) == {"a": 2, "b": None, "c": None}
    assert [bucket_of(rank) for rank in (1, 3, 4, 20, 21, None)] == [
        "top 3", "top 3", "4–20", "4–20", "below 20", "below 20",
    ]  # fmt: skip


def test_where_it_helps_counts_wins_and_losses_per_bm25_bucket(summaries, tmp_path):
    # BM25 ranks the positive of q0..q19 in its top 3, q20..q39 at 4-20, the rest below 20.
    ranks = {q: (1 if i < 20 else 10 if i < 40 else None) for i, q in enumerate(QUERIES)}
    helps = where_it_helps(summaries, ranks)
    assert {row["variant"] for row in helps} == {"bm25-hard/siamese", "dense-hard/siamese"}  # trained, not random
    by = {(row["variant"], row["bucket"]): row for row in helps}
    bm25 = {s.variant: s for s in summaries}["bm25-hard/siamese"]
    random_arm = {s.variant: s for s in summaries}["random/siamese"]
    top = by[("bm25-hard/siamese", "top 3")]
    differences = [bm25.per_query["ndcg@10"][q] - random_arm.per_query["ndcg@10"][q] for q in QUERIES[:20]]
    assert top["queries"] == 20
    assert (top["wins"], top["losses"], top["ties"]) == (
        sum(d > 0 for d in differences), sum(d < 0 for d in differences), sum(d == 0 for d in differences),
    )  # fmt: skip
    assert top["ndcg@10"] == pytest.approx(np.mean(differences))
    assert top["wins"] > top["losses"]  # the fixture's bm25-hard hits 95% of queries against random's 50%
    assert sum(by[("bm25-hard/siamese", b)]["queries"] for b in ("top 3", "4–20", "below 20")) == len(QUERIES)

    markdown = comparison_markdown(summaries, "study", helps=helps, plots={"bm25-hard/siamese": "neg.png"})
    assert "## Where does it help?" in markdown
    assert "| bm25-hard/siamese | top 3 | 20 |" in markdown
    assert "![bm25-hard/siamese](neg.png)" in markdown
    table = {row["variant"]: row for row in csv.DictReader(write_csv(summaries, tmp_path / "c.csv", helps).open())}
    assert table["bm25-hard/siamese"]["bm25_top3_wins"] == str(top["wins"])
    assert float(table["bm25-hard/siamese"]["bm25_top3_recall@1"]) == pytest.approx(top["recall@1"], abs=1e-6)
    assert table["random/siamese"]["bm25_top3_wins"] == ""
    assert float(table["bm25-hard/siamese"]["recall@1_p_holm"]) >= 0  # recall@1 is tested like the others


def test_negatives_plot_is_drawn(tmp_path):
    from denseflow.model.evaluation.plots import plot_negatives
    from denseflow.model.mining.negatives import Negative, TrainExample

    examples = [TrainExample("q", "d0", [Negative("d1", 2, 5.0, "bm25", 0.6)], 0.8)]
    random = [TrainExample("q", "d0", [Negative("d7", None, None, "random", 0.1)], 0.8)]
    path = plot_negatives({"round1": examples, "random": random}, tmp_path / "neg.png", "negatives")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_each_partition_has_its_own_means_and_tests_and_the_attractor_column():
    from denseflow.model.evaluation.compare_negatives.report import ATTRACTORS, restrict_runs

    results = [run("random", 0, 0.5), run("bm25-hard", 0, 0.95)]
    results[1].metrics[ATTRACTORS] = 1.25
    first_half = QUERIES[:30]
    restricted = restrict_runs(results, first_half)
    assert set(restricted[1].per_query["ndcg@10"]) == set(first_half)
    expected = np.mean([results[1].per_query["ndcg@10"][q] for q in first_half])
    assert restricted[1].metrics["ndcg@10"] == pytest.approx(expected)
    assert restricted[1].metrics[ATTRACTORS] == 1.25  # not a per-query figure: kept
    part = summarise_runs(restricted, permutations=200)
    assert part[1].tests["ndcg@10"].queries == 30
    markdown = comparison_markdown(
        summarise_runs(results, permutations=200), "t", partitions=[("unseen_docs", 30, part, [])]
    )
    assert "## On the 30 unseen-document test queries" in markdown
    assert "| 1.25 |" in markdown
