"""The whole retrain flow on the tiny model and dataset, with Prefect's test harness and a temporary MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from denseflow.flows.retrain import retrain
from denseflow.model.config import RetrainConfig
from mlflow.tracking import MlflowClient


def tiny_config(tmp_path: Path, beir_dir: Path, model_dir: Path) -> RetrainConfig:
    return RetrainConfig.model_validate(
        {
            "workspace": str(tmp_path / "ws"),
            "data": {"path": str(beir_dir)},
            "mining": {"strategy": "bm25", "rank_start": 0, "rank_end": 10},
            "train": {"base_model": str(model_dir), "batch_size": 8, "epochs": 1, "max_seq_length": 32},
            "eval": {"batch_size": 16},
            "tracking": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "test"},
        }
    )


def test_retrain_registers_candidate_with_metrics(prefect_harness, tmp_path, tiny_beir_dir, tiny_model_dir):
    summary = retrain(tiny_config(tmp_path, tiny_beir_dir, tiny_model_dir))

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    candidate = client.get_model_version_by_alias("retriever", "candidate")
    assert str(candidate.version) == summary["version"] == "1"
    assert candidate.run_id == summary["mlflow_run_id"]
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["prefect.flow_run_id"] != "none"
    assert run.data.params["train.batch_size"] == "8"
    trained = summary["metrics"]["trained"]
    assert run.data.metrics["ndcg_at_10"] == pytest.approx(trained["ndcg@10"])
    assert candidate.tags["ndcg_at_10"] == f"{trained['ndcg@10']:.6f}"
    assert {"zeroshot.ndcg_at_10", "bm25.recall_at_100", "ingest.rejected_rows"} <= set(run.data.metrics)
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert {"train_examples.jsonl", "rejects.jsonl", "evaluation", "plots"} <= artifacts
    # 12 test queries of 36 docs: recall@100 covers the whole corpus, so every system finds every positive.
    assert trained["recall@100"] == 1.0
    examples = (tmp_path / "ws" / "runs" / summary["mlflow_run_id"] / "train_examples.jsonl").read_text().splitlines()
    assert len(examples) == 24
    assert all(json.loads(line)["negatives"] for line in examples)
    # The first version is promoted and published from the corpus embeddings evaluation already computed.
    published = summary["published"]
    assert published["documents"] == 36
    assert published["shards_reused"] == published["shards"] > 0


def test_second_run_registers_a_new_version_and_reuses_training(
    prefect_harness, tmp_path, tiny_beir_dir, tiny_model_dir
):
    config = tiny_config(tmp_path, tiny_beir_dir, tiny_model_dir)
    first = retrain(config)
    second = retrain(config)
    assert (first["version"], second["version"]) == ("1", "2")
    # Same examples and settings: the second run reuses the trained model, so the metrics are identical.
    assert first["metrics"]["trained"] == second["metrics"]["trained"]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert str(client.get_model_version_by_alias("retriever", "candidate").version) == "2"
