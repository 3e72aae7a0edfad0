"""The whole retrain flow on the tiny model and dataset, with Prefect's test harness and a temporary MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from denseflow.flows.retrain import retrain
from denseflow.model.config import RetrainConfig


def tiny_config(tmp_path: Path, beir_dir: Path, model_dir: Path) -> RetrainConfig:
    return RetrainConfig.model_validate(
        {
            "workspace": str(tmp_path / "ws"),
            # 24 train queries: a quarter carved into dev leaves enough of both.
            "data": {"path": str(beir_dir), "dev_share": 0.25},
            "mining": {"candidates": "bm25", "rank_end": 10},
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
    # The registered figures are the served mode's (hybrid by default), with the weight serving needs.
    hybrid = summary["metrics"]["hybrid"]
    assert summary["served_mode"] == "hybrid"
    assert candidate.tags["ndcg_at_10"] == f"{hybrid['ndcg@10']:.6f}"
    assert candidate.tags["trained.ndcg_at_10"] == f"{trained['ndcg@10']:.6f}"
    assert 0.0 <= float(candidate.tags["hybrid.weight"]) <= 1.0
    # Choices were made on a dev split carved from train; its curve is a metric history (a chart in MLflow).
    assert summary["dev_split"] == "dev"
    assert set(summary["dev_metrics"]) == {"trained", "hybrid", "zero-shot", "bm25"}
    dev_curve = client.get_metric_history(run.info.run_id, "train.dev_ndcg_at_10")
    assert len(dev_curve) >= 2
    # The tiny random model may not beat its start on 6 dev queries: then the base model is kept, also a selection.
    assert run.data.tags["train.selection"] in {"best dev checkpoint", "base model (no checkpoint beat it on dev)"}
    assert {"zeroshot.ndcg_at_10", "bm25.recall_at_100", "ingest.rejected_rows"} <= set(run.data.metrics)
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert {"train_examples.jsonl", "rejects.jsonl", "evaluation", "plots"} <= artifacts
    # 12 test queries of 36 docs: recall@100 covers the whole corpus, so every system finds every positive.
    assert trained["recall@100"] == 1.0
    examples = (tmp_path / "ws" / "runs" / summary["mlflow_run_id"] / "train_examples.jsonl").read_text().splitlines()
    dev_queries = int(run.data.metrics["ingest.dev_queries"])
    assert dev_queries > 0
    assert len(examples) == 24 - dev_queries
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


def test_production_left_without_an_index_is_published_by_the_next_run(
    prefect_harness, tmp_path, tiny_beir_dir, tiny_model_dir
):
    """A crash between the gate's move and publication: the re-run publishes production even on a tie."""
    config = tiny_config(tmp_path, tiny_beir_dir, tiny_model_dir)
    unpublished = config.model_copy(
        update={"promotion": config.promotion.model_copy(update={"publish_on_promotion": False})}
    )
    first = retrain(unpublished)
    assert first["promotion"]["promote"] is True
    assert "published" not in first
    second = retrain(config)
    assert second["promotion"]["promote"] is False  # same training reused: a tie
    assert second["published"]["documents"] == 36
    manifest = json.loads((Path(second["published"]["path"]) / "manifest.json").read_text())
    assert str(manifest["model"]["version"]) == first["version"]


def test_too_few_train_queries_train_without_selection_and_say_so(
    prefect_harness, tmp_path, tiny_beir_dir, tiny_model_dir
):
    config = tiny_config(tmp_path, tiny_beir_dir, tiny_model_dir)
    config = config.model_copy(update={"data": config.data.model_copy(update={"min_dev_train_queries": 1000})})
    summary = retrain(config)
    assert summary["dev_split"] is None
    run = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(summary["mlflow_run_id"])
    assert run.data.tags["train.selection"] == "none (no dev split)"
    assert summary["hybrid"]["weight"] == 0.5
