"""The negatives study end to end on the tiny model and data (every default arm, one seed) and its CLI.

Asymmetric towers so the Router path trains too; dense-remined covers two rounds re-mined with the round's
model; bm25-old the old rule on the miner's scores.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from denseflow.model.config import CompareNegativesConfig

ARMS = ["zero-shot", "bm25-alone", "random", "bm25-hard", "dense-hard", "dense-remined", "bm25-old"]
HARD = ["bm25-hard", "dense-hard", "dense-remined", "bm25-old"]


def tiny_study(tmp_path: Path, beir_dir: Path, model_dir: Path) -> dict:
    return {
        "workspace": str(tmp_path / "ws"),
        "arms": ARMS,
        "towers": ["asymmetric"],
        "seeds": [0],
        "dense_rounds": 2,
        "permutations": 200,
        "data": {"path": str(beir_dir)},
        "mining": {"rank_end": 10},
        # A high rate and no warm-up so two steps visibly move the random tiny model between rounds.
        "train": {
            "base_model": str(model_dir),
            "batch_size": 8,
            "max_steps": 4,
            "max_seq_length": 32,
            "learning_rate": 1e-3,
            "warmup_ratio": 0.0,
        },  # fmt: skip
        "eval": {"batch_size": 16},
        "tracking": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "study"},
    }


def test_study_runs_every_arm_and_reports_tests_help_and_negatives(
    prefect_harness, tmp_path, tiny_beir_dir, tiny_model_dir
):
    from denseflow.flows.compare_negatives import compare_negatives

    summary = compare_negatives(
        CompareNegativesConfig.model_validate(tiny_study(tmp_path, tiny_beir_dir, tiny_model_dir))
    )

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = client.get_run(summary["mlflow_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["study.runs"] == len(ARMS)
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    by_arm = {run.data.tags["study.arm"]: run for run in children}
    assert set(by_arm) == set(ARMS)
    assert all(run.info.status == "FINISHED" for run in children)
    for arm in ["random", *HARD]:
        data = by_arm[arm].data
        assert data.tags["towers"] == "asymmetric" and data.params["train.seed"] == "0"
        steps = [data.metrics[key] for key in data.metrics if key.startswith("train.") and key.endswith("steps")]
        assert sum(steps) == 4  # the same optimizer steps for every trained arm
    params = {arm: by_arm[arm].data.params for arm in ["random", *HARD]}
    assert [params[arm]["mining.candidates"] for arm in ["random", *HARD]] == [
        "random", "bm25", "dense", "dense", "bm25",
    ]  # fmt: skip
    assert (params["bm25-old"]["mining.filter"], params["bm25-old"]["mining.selection"]) == ("miner_margin", "sampled")
    assert (params["bm25-hard"]["mining.filter"], params["bm25-hard"]["mining.selection"]) == ("teacher", "top")

    hard = by_arm["bm25-hard"].data.metrics
    dev_queries = parent.data.metrics["ingest.dev_queries"]  # carved by document group, never trained on
    assert hard["mine.examples"] == 24 - dev_queries and hard["mine.removed_judged_positive"] > 0
    assert 0 < hard["mine.teacher_ratio_mean"]  # every negative carries its teacher score
    old = by_arm["bm25-old"].data.metrics
    assert old["mine.removed_rank_window"] > 0 and "mine.removed_teacher_margin" not in old
    remined = by_arm["dense-remined"].data.metrics
    assert remined["train.round1.steps"] == remined["train.round2.steps"] == 2
    assert {"round1.recall_at_10", "recall_at_10", "mine.round2.examples"} <= set(remined)
    arms_dir = tmp_path / "ws" / "runs" / parent.info.run_id / "arms"
    first, second = (d / "train_examples.jsonl" for d in sorted(arms_dir.glob("dense-remined*/round*")))
    assert first.read_text() != second.read_text()  # re-mined with the round-1 model
    plots = {item.path for item in client.list_artifacts(by_arm["bm25-hard"].info.run_id, "plots")}
    assert "plots/negatives.png" in plots

    artifacts = {item.path for item in client.list_artifacts(parent.info.run_id, "report")}
    names = ["comparison.md", "comparison.csv", "recall_at_k.png", "negatives_dense-remined_asymmetric.png"]
    assert {f"report/{name}" for name in names} <= artifacts
    rows = {row["variant"]: row for row in csv.DictReader(Path(summary["csv"]).open())}
    assert set(rows) == {"zero-shot", "bm25-alone"} | {f"{arm}/asymmetric" for arm in ["random", *HARD]}
    for arm in HARD:
        row = rows[f"{arm}/asymmetric"]
        assert row["baseline"] == "random/asymmetric" and 0 <= float(row["recall@1_p_holm"]) <= 1
        counted = sum(int(row[f"bm25_{key}_queries"]) for key in ("top3", "4to20", "below20"))
        assert counted == 12  # every test query sits in one BM25 bucket
    assert rows["random/asymmetric"]["baseline"] == "" and rows["random/asymmetric"]["bm25_top3_wins"] == ""
    assert float(rows["bm25-hard/asymmetric"]["recall@10_mean"]) == pytest.approx(
        by_arm["bm25-hard"].data.metrics["recall_at_10"], abs=1e-6
    )
    markdown = Path(summary["markdown"]).read_text()
    assert "| dense-remined/asymmetric | 1 |" in markdown and "## Where does it help?" in markdown
    assert "![bm25-old/asymmetric](negatives_bm25-old_asymmetric.png)" in markdown
    assert [row["arm"] for row in summary["rows"]][:3] == ["zero-shot", "bm25-alone", "random/asymmetric"]

    from prefect.artifacts import Artifact

    artifact = Artifact.get("compare-negatives")
    assert artifact is not None and artifact.type == "table" and "bm25-old/asymmetric" in str(artifact.data)


def test_cli_plan_prints_the_estimate(tmp_path, tiny_beir_dir, tiny_model_dir, capsys):
    from denseflow.cli.main import main

    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(tiny_study(tmp_path, tiny_beir_dir, tiny_model_dir)))
    assert main(["compare-negatives", "--config", str(path), "--plan"]) == 0
    out = capsys.readouterr().out
    assert "7 runs" in out and "dense-remined_asymmetric_seed0" in out and "total" in out
    assert "rates (configured" in out and "budget on this CPU" in out


def test_a_plan_over_its_budget_names_the_reduced_plan_that_fits(tmp_path, tiny_beir_dir, tiny_model_dir, capsys):
    from denseflow.cli.main import main

    study = tiny_study(tmp_path, tiny_beir_dir, tiny_model_dir) | {"seeds": [0, 1, 2]}
    study["estimate"] = {"budget_minutes": 0.4, "step_seconds_at_128": 1.0, "bf16_step_seconds_at_128": 1.0}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    assert main(["compare-negatives", "--config", str(path), "--plan"]) == 0
    out = capsys.readouterr().out
    assert "OVER the 0 min budget" in out
    assert "reduced plan" in out and "seeds: [0, 1]" in out
    assert '"dense-hard"' not in out.split("reduced plan")[1]
