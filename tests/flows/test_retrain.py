"""The whole retrain flow on the tiny model and dataset, with Prefect's test harness and a temporary MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from denseflow.flows.retrain import retrain
from denseflow.model.config import RetrainConfig, TrainConfig
from denseflow.model.served_system import ServedSystem


def tiny_config(tmp_path: Path, beir_dir: Path, model_dir: Path, **sections: dict) -> RetrainConfig:
    config = RetrainConfig.model_validate(
        {
            "workspace": str(tmp_path / "ws"),
            # 24 train queries, each judging its own document: a quarter of the groups carved into dev leaves
            # enough of both; on 6 dev queries choices are made only because min_dev_queries is lowered.
            "data": {"path": str(beir_dir), "dev_share": 0.25, "min_dev_queries": 2},
            "mining": {"candidates": "bm25", "rank_end": 10},
            "train": {"base_model": str(model_dir), "batch_size": 8, "epochs": 1, "max_seq_length": 32},
            "eval": {"batch_size": 16},
            "tracking": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "test"},
        }
    )
    return config.model_copy(
        update={name: getattr(config, name).model_copy(update=values) for name, values in sections.items()}
    )


def client_of(tmp_path: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_retrain_registers_candidate_with_metrics(prefect_harness, tmp_path, tiny_beir_dir, tiny_model_dir):
    from denseflow.model.encoder import load_encoder
    from denseflow.model.training.shallow import query_tower_depth
    from denseflow.registry.resolve import resolve_model

    # A one-layer query tower is distilled too, and (any loss tolerated here) is what ships.
    shallow = {"query_layers": [1], "query_layers_tolerance": 1.0, "query_distill_epochs": 1}
    summary = retrain(tiny_config(tmp_path, tiny_beir_dir, tiny_model_dir, train=shallow))

    client = client_of(tmp_path)
    candidate = client.get_model_version_by_alias("retriever", "candidate")
    assert str(candidate.version) == summary["version"] == "1"
    assert candidate.run_id == summary["mlflow_run_id"]
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["prefect.flow_run_id"] != "none"
    assert run.data.params["train.batch_size"] == "8"
    trained = summary["metrics"]["trained"]
    assert run.data.metrics["ndcg_at_10"] == pytest.approx(trained["ndcg@10"])
    # The registered figures are the served mode's, chosen on dev, with what serving needs to reproduce them.
    served = summary["served_mode"]
    assert served in {"dense", "hybrid"}
    assert candidate.tags["served.mode"] == served
    served_label = "hybrid" if served == "hybrid" else "trained"
    assert candidate.tags["ndcg_at_10"] == f"{summary['metrics'][served_label]['ndcg@10']:.6f}"
    assert candidate.tags["trained.ndcg_at_10"] == f"{trained['ndcg@10']:.6f}"
    assert "prior" in candidate.tags["served.mode_chosen_by"]  # the prior, or a dev winner tested against it
    # Six dev queries (< choices.min_recipe_dev_queries): no alternative recipe is trained, and the run says why.
    assert run.data.tags["choice.recipe.used"] == "prior"
    assert not any(key.startswith("recipe.") for key in run.data.metrics)
    gate_comparison = tmp_path / "ws" / "runs" / summary["mlflow_run_id"] / "evaluation" / "compare_base.md"
    assert gate_comparison.read_text().startswith("# candidate against base")
    record = ServedSystem.from_json(candidate.tags["served.system"])
    assert record.mode == served
    assert record.bm25.stemmer == "english"
    assert record.document_max_seq_length >= record.query_max_seq_length
    # Choices were made on a dev split carved by document groups; its curve is a metric history (a chart).
    assert summary["dev_split"] == "dev"
    assert run.data.tags["data.dev_method"] == "document groups"
    assert set(summary["dev_metrics"]) == {"trained", "hybrid", "zero-shot", "zero-shot+bm25", "bm25"}
    dev_curve = client.get_metric_history(run.info.run_id, "train.dev_ndcg_at_10")
    assert len(dev_curve) >= 2
    # The checkpoint and α are the priors unless dev's paired test overrules them, and the tag says which.
    assert "priors unless a paired test" in run.data.tags["train.selection"]
    assert {"train.checkpoint", "train.interpolation"} <= {choice["key"] for choice in summary["choices"]}
    train = TrainConfig()
    alphas = set(train.interpolation_grid) | {train.interpolation_prior}  # every α tried, the prior among them
    assert len(client.get_metric_history(run.info.run_id, "train.interpolation_dev_ndcg_at_10")) == len(alphas)
    assert {"zeroshot.ndcg_at_10", "bm25.recall_at_100", "ingest.rejected_rows"} <= set(run.data.metrics)
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert {"train_examples.jsonl", "rejects.jsonl", "evaluation", "plots"} <= artifacts
    plots = {item.path for item in client.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/recall_at_k.png", "plots/train.dev_selection.png"} <= plots
    # 12 test queries of 36 docs: recall@100 covers the whole corpus, so every system finds every positive.
    assert trained["recall@100"] == 1.0
    examples = (tmp_path / "ws" / "runs" / summary["mlflow_run_id"] / "train_examples.jsonl").read_text().splitlines()
    dev_queries = int(run.data.metrics["ingest.dev_queries"])
    assert dev_queries > 0
    assert len(examples) == 24 - dev_queries
    assert all(json.loads(line)["negatives"] for line in examples)
    # Every test query judges a document no train query judges: the seen partition is empty, and 12 unseen
    # queries are too few for a figure, which the report says instead of printing one.
    unseen = summary["partitions"]["trained"]["unseen_docs"]
    assert (unseen["queries"], unseen["metrics"]) == (12, None)
    assert "too few" in unseen["note"]
    assert summary["partitions"]["trained"]["seen_docs"]["queries"] == 0
    # The gate compared with the base model's own system too, and named all the figures it read.
    promotion = summary["promotion"]
    assert promotion["base_figure"]["value"] == pytest.approx(
        summary["metrics"]["zero-shot+bm25" if summary["base_served_mode"] == "hybrid" else "zero-shot"]["ndcg@10"]
    )
    assert "base model" in promotion["reason"]
    # Whichever system won is production, published from the corpus embeddings evaluation already computed.
    production = client.get_model_version_by_alias("retriever", "production")
    assert str(production.version) == str(promotion["production"])
    published = summary["published"]
    assert published["documents"] == 36
    assert (published["documents_encoded"], published["documents_reused"]) == (0, 36)
    # The version's model card: sentence-transformers' card and the pipeline's section, shown by `models show`.
    card = candidate.description
    assert card.startswith(
        "## denseflow: how this version was made"
    )  # the head, not sentence-transformers' boilerplate
    whole = (tmp_path / "ws" / "runs" / summary["mlflow_run_id"] / "model_card.md").read_text()
    assert whole.startswith(card.split("\n\n… the whole card")[0][:2000])
    assert "MultipleNegativesRankingLoss" in whole
    assert "WiSE-FT α" in card and "### Promotion gate" in card
    assert "model_card.md" in artifacts
    # The shallow query tower shipped: one layer for queries, the document tower whole, so publication encoded
    # nothing again (above), and every depth's served figures and encode time are on the run.
    assert run.data.tags["choice.query_layers.used"] == "1"
    registered = load_encoder(resolve_model(f"retriever/{summary['version']}", tmp_path / "ws").local_dir)
    assert query_tower_depth(registered) == 1
    assert len(registered[0].sub_modules["document"][0].auto_model.encoder.layer) == 2
    assert {"query_layers.1.dev_served_ndcg_at_10", "query_layers.2.encode_p50_ms"} <= set(run.data.metrics)
    report = tmp_path / "ws" / "runs" / summary["mlflow_run_id"] / "query_layers.md"
    assert "| 1 (ships) |" in report.read_text()


def test_a_candidate_no_better_than_its_base_model_is_not_shipped_the_base_is(
    prefect_harness, tmp_path, tiny_beir_dir, tiny_model_dir
):
    """α 0 makes the trained model the base model itself: a tie with the base system, so the base ships."""
    config = tiny_config(tmp_path, tiny_beir_dir, tiny_model_dir, train={"interpolation": 0.0})
    summary = retrain(config)
    promotion = summary["promotion"]
    assert promotion["decision"] == "base model shipped"
    assert promotion["promote"] is False
    client = client_of(tmp_path)
    base_version = client.get_model_version_by_alias("retriever", "production")
    assert str(base_version.version) == promotion["base_version"] != summary["version"]
    assert base_version.tags["denseflow.base_model"] == "true"
    # `candidate` stays the trained version; the published index serves the base model's version.
    assert str(client.get_model_version_by_alias("retriever", "candidate").version) == summary["version"]
    manifest = json.loads((Path(summary["published"]["path"]) / "manifest.json").read_text())
    assert str(manifest["model"]["version"]) == promotion["base_version"]


def test_second_run_registers_a_new_version_and_reuses_training(
    prefect_harness, tmp_path, tiny_beir_dir, tiny_model_dir
):
    config = tiny_config(tmp_path, tiny_beir_dir, tiny_model_dir)
    first = retrain(config)
    second = retrain(config)
    assert int(second["version"]) > int(first["version"])
    # Same examples and settings: the second run reuses the trained model, so the metrics are identical.
    assert first["metrics"]["trained"] == second["metrics"]["trained"]
    assert str(client_of(tmp_path).get_model_version_by_alias("retriever", "candidate").version) == second["version"]


def test_production_left_without_an_index_is_published_by_the_next_run(
    prefect_harness, tmp_path, tiny_beir_dir, tiny_model_dir
):
    """A crash between the gate's move and publication: the re-run publishes production even on a tie."""
    config = tiny_config(tmp_path, tiny_beir_dir, tiny_model_dir, train={"interpolation": 0.0})
    unpublished = config.model_copy(
        update={"promotion": config.promotion.model_copy(update={"publish_on_promotion": False})}
    )
    first = retrain(unpublished)
    production = first["promotion"]["production"]
    assert production is not None
    assert "published" not in first
    second = retrain(config)
    assert second["promotion"]["promote"] is False  # same model again: a tie with production and the base
    assert second["published"]["documents"] == 36
    manifest = json.loads((Path(second["published"]["path"]) / "manifest.json").read_text())
    assert str(manifest["model"]["version"]) == str(production)


def test_a_dev_split_too_small_to_choose_on_uses_the_priors_and_says_so(
    prefect_harness, tmp_path, tiny_beir_dir, tiny_model_dir
):
    config = tiny_config(tmp_path, tiny_beir_dir, tiny_model_dir, data={"min_dev_queries": 30})
    summary = retrain(config)
    assert summary["dev_split"] == "dev"
    assert summary["selection_split"] is None
    run = client_of(tmp_path).get_run(summary["mlflow_run_id"])
    assert run.data.tags["train.selection"].startswith("none (no dev split to select on)")
    assert run.data.metrics["train.interpolation"] == 0.5
    assert summary["served_mode"] == "hybrid"
    assert summary["served_mode_chosen_by"].startswith("prior")
    assert summary["hybrid"]["weight"] == 0.5
    assert summary["hybrid"]["weight_chosen_by"].startswith("prior")
    # Dev is still reported, with its bootstrap interval around the figure.
    low, high = summary["dev_intervals"]["trained"]
    assert low <= summary["dev_metrics"]["trained"]["ndcg@10"] <= high


def test_a_query_tower_deeper_than_the_model_is_refused_before_a_run_starts(
    prefect_harness, tmp_path, tiny_beir_dir, tiny_model_dir
):
    with pytest.raises(ValueError, match=r"train\.query_layers"):
        retrain(tiny_config(tmp_path, tiny_beir_dir, tiny_model_dir, train={"query_layers": [3]}))
    assert not (tmp_path / "mlflow.db").exists()  # no MLflow run was started, so none is left RUNNING


def test_too_few_train_queries_train_without_selection_and_say_so(
    prefect_harness, tmp_path, tiny_beir_dir, tiny_model_dir
):
    config = tiny_config(tmp_path, tiny_beir_dir, tiny_model_dir, data={"min_dev_train_queries": 1000})
    summary = retrain(config)
    assert summary["dev_split"] is None
    run = client_of(tmp_path).get_run(summary["mlflow_run_id"])
    assert run.data.tags["train.selection"].startswith("none (no dev split")
    assert run.data.tags["data.dev_method"] == "none"
    assert summary["hybrid"]["weight"] == 0.5


def test_a_query_tower_only_retrain_registers_publishes_and_serves_queries_through_mlflows_own_api(
    prefect_harness, tmp_path, tiny_beir_dir, tiny_model_dir, capsys, monkeypatch
):
    import mlflow
    import numpy as np
    import torch

    from denseflow.model.encoder import encode, load_encoder
    from denseflow.registry.resolve import resolve_model

    # No WiSE-FT merge and a large step: the query tower surely moves, so MLflow's routing below is visible.
    train = {"towers": "query_only", "interpolation": 1.0, "learning_rate": 1e-2}
    summary = retrain(tiny_config(tmp_path, tiny_beir_dir, tiny_model_dir, train=train))
    client = client_of(tmp_path)
    candidate = client.get_model_version_by_alias("retriever", "candidate")
    assert candidate.tags["towers"] == "asymmetric"
    assert summary["published"]["documents"] == 36
    # The document tower never trained (and the WiSE-FT merge of two equal towers is that tower): it is the
    # base model's, weight for weight, while the query tower moved.
    (model_dir,) = (tmp_path / "ws" / "training").glob("*/model")
    towers = load_encoder(model_dir)[0].sub_modules
    base = load_encoder(tiny_model_dir).state_dict()
    document, query = towers["document"].state_dict(), towers["query"].state_dict()
    assert set(document) == set(base)
    assert all(torch.equal(value, base[name]) for name, value in document.items())
    assert summary["promotion"]["decision"] in {"promoted", "base model shipped"}
    assert not all(torch.equal(value, base[name]) for name, value in query.items())

    # MLflow's own loaders embed queries with the query tower (encode used to run the document tower).
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    texts = ["heart rate and exercise", "gene expression"]
    ours = load_encoder(resolve_model("retriever/1", tmp_path / "ws", default_name="retriever").local_dir)
    query, document = encode(ours, texts, "query"), encode(ours, texts, "document")
    assert not np.allclose(query, document, atol=1e-4)  # the towers differ, so the routing is visible

    loaded = mlflow.sentence_transformers.load_model("models:/retriever/1")
    np.testing.assert_allclose(loaded.encode(texts, normalize_embeddings=True), query, atol=1e-5)
    pyfunc = mlflow.pyfunc.load_model("models:/retriever/1")
    embedded = np.asarray(pyfunc.predict(texts, params={"task": "document"}))
    np.testing.assert_allclose(embedded / np.linalg.norm(embedded, axis=1, keepdims=True), document, atol=1e-5)

    # `denseflow compare base 1`: both systems evaluated as each is served, on the data version 1 was trained on.
    from denseflow.cli.main import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr("denseflow.flows.compare.resolve_base_model", lambda _: str(tiny_model_dir))
    capsys.readouterr()
    assert main(["compare", "base", "1", "--workspace", str(tmp_path / "ws"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["label_a"] == "base" and result["label_b"] == "1"
    assert result["all_queries"]["queries"] > 0
    assert set(result["latency_p50_ms"]) == {"base", "1"}
    assert "trained on" in result["data"]  # the version's own data, not the bundled SciFact
    folder = Path(result["folder"])
    assert (folder / "compare.md").read_text().startswith("# 1 against base")
    assert "<table>" in (folder / "compare.html").read_text()
