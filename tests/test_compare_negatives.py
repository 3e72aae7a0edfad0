"""The negatives study end to end on the tiny model and data (two arms, one seed) and its CLI.

The trained arms are random and mix-hard: mix-hard goes through BM25 mining, dense mining with the previous
round's model, the mix and two rounds, so it covers every path dense-hard takes and more.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml
from denseflow.model.config import CompareConfig
from mlflow.tracking import MlflowClient


def tiny_study(tmp_path: Path, beir_dir: Path, model_dir: Path) -> dict:
    return {
        "workspace": str(tmp_path / "ws"),
        "arms": ["random", "mix-hard"],
        "towers": ["asymmetric"],
        "seeds": [0],
        "dense_rounds": 2,
        "permutations": 200,
        "data": {"path": str(beir_dir)},
        "mining": {"rank_start": 1, "rank_end": 10},
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


def test_study_records_parent_children_table_and_plot(prefect_harness, tmp_path, tiny_beir_dir, tiny_model_dir):
    from denseflow.flows.compare_negatives import compare_negatives

    summary = compare_negatives(CompareConfig.model_validate(tiny_study(tmp_path, tiny_beir_dir, tiny_model_dir)))

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = client.get_run(summary["mlflow_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.params["arms"] == "['random', 'mix-hard']"
    experiment = parent.info.experiment_id
    children = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    by_arm = {run.data.tags["study.arm"]: run for run in children}
    assert set(by_arm) == {"random", "mix-hard"}
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.tags["towers"] == "asymmetric" and run.data.tags["study.seed"] == "0"
        assert run.data.params["train.seed"] == "0" and run.data.params["train.towers"] == "asymmetric"
    random_run, dense_run = by_arm["random"].data, by_arm["mix-hard"].data
    assert random_run.params["mining.strategy"] == "random" and dense_run.params["mining.strategy"] == "dense"
    assert random_run.metrics["train.steps"] == 4
    # Two rounds of two steps each (the same four steps as random), dense-mined with the previous model.
    assert dense_run.metrics["train.round1.steps"] == dense_run.metrics["train.round2.steps"] == 2
    for stage in ("round1", "round2"):
        metrics = dense_run.metrics
        assert metrics[f"mine.{stage}.examples"] == 24
        assert metrics[f"mine.{stage}.taken_first"] + metrics[f"mine.{stage}.taken_second"] == 24
        for miner in ("bm25", "dense"):
            assert metrics[f"mine.{stage}.{miner}.examples"] == 24
            assert metrics[f"mine.{stage}.{miner}.removed_judged_positive"] > 0  # positives were in the window
            assert metrics[f"mine.{stage}.{miner}.removed_rank_window"] > 0
    assert {"round1.recall_at_10", "recall_at_10", "ndcg_at_10"} <= set(dense_run.metrics)
    round_dirs = sorted((tmp_path / "ws" / "runs" / parent.info.run_id / "arms").glob("mix-hard*/round*"))
    first, second = ((d / "dense" / "train_examples.jsonl").read_text() for d in round_dirs)
    assert first != second  # re-mined with the round-1 model
    assert all((d / "train_examples.jsonl").is_file() for d in round_dirs)  # the mix each round trained on

    artifacts = {item.path for item in client.list_artifacts(parent.info.run_id, "report")}
    assert {f"report/{name}" for name in ("comparison.md", "comparison.csv", "recall_at_k.png")} <= artifacts
    rows = {row["variant"]: row for row in csv.DictReader(Path(summary["csv"]).open())}
    assert set(rows) == {"random/asymmetric", "mix-hard/asymmetric"}
    dense_row = rows["mix-hard/asymmetric"]
    assert dense_row["baseline"] == "random/asymmetric" and rows["random/asymmetric"]["baseline"] == ""
    assert 0 <= float(dense_row["recall@10_p_randomisation"]) <= 1
    assert float(dense_row["recall@10_mean"]) == pytest.approx(dense_run.metrics["recall_at_10"], abs=1e-6)
    assert float(dense_row["mine.round2.dense.removed_rank_window"]) == metrics["mine.round2.dense.removed_rank_window"]
    markdown = Path(summary["markdown"]).read_text()
    assert "| mix-hard/asymmetric | 1 |" in markdown and "What the negative miners did" in markdown
    assert parent.data.metrics["study.runs"] == 2
    assert client.get_run(parent.info.run_id).data.metrics["mix-hard_asymmetric.recall_at_10.mean"] == pytest.approx(
        dense_run.metrics["recall_at_10"]
    )
    assert [row["arm"] for row in summary["rows"]] == ["random/asymmetric", "mix-hard/asymmetric"]

    from prefect.artifacts import Artifact

    artifact = Artifact.get("compare-negatives")
    assert artifact is not None and artifact.type == "table" and "mix-hard/asymmetric" in str(artifact.data)


def test_cli_plan_prints_the_estimate(tmp_path, tiny_beir_dir, tiny_model_dir, capsys):
    from denseflow.cli.main import main

    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(tiny_study(tmp_path, tiny_beir_dir, tiny_model_dir)))
    assert main(["compare-negatives", "--config", str(path), "--plan"]) == 0
    out = capsys.readouterr().out
    assert "2 runs" in out and "mix-hard_asymmetric_seed0" in out and "total" in out
