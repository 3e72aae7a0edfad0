"""The study's plan: runs in order, per-run settings, steps split over rounds, the time estimate, config checks."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from denseflow.model.config import CompareNegativesConfig, TrainConfig
from denseflow.model.evaluation.compare_negatives.plan import (
    ArmSpec,
    Rates,
    cpu_rates,
    estimate_study,
    measure_rates,
    plan_study,
    run_config,
    split_steps,
)
from tests.conftest import REPO


def test_config_defaults_fit_the_budget_on_a_bf16_cpu_and_yaml_overrides_keys(tmp_path):
    config = CompareNegativesConfig()
    # make run's recipe and sequence length, 2 epochs of SciFact's train pairs at batch 32, 3 seeds
    assert (config.train.max_seq_length, config.train.max_steps, config.seeds) == (
        TrainConfig().max_seq_length, 52, [0, 1, 2],
    )  # fmt: skip
    specs = plan_study(config)
    assert [spec.slug for spec in specs[:3]] == ["zero-shot", "bm25-alone", "random_query_only_seed0"]
    assert [spec.arm for spec in specs[2:7]] == ["random", "bm25-hard", "dense-hard", "dense-remined", "bm25-old"]
    assert len(specs) == 2 + 5 * 3
    # SciFact: 5,183 documents, 809 train and 300 test queries, at the configured rates.
    bf16 = Rates(config.estimate.bf16_docs_per_second_at_128, config.estimate.bf16_step_seconds_at_128, "bf16")
    assert estimate_study(config, 5183, 809, 300, rates=bf16).total_seconds / 60 < config.estimate.budget_minutes
    fp32 = Rates(config.estimate.docs_per_second_at_128, config.estimate.step_seconds_at_128, "fp32")
    assert (
        estimate_study(config, 5183, 809, 300, rates=fp32).total_seconds / 60 > 3 * 60
    )  # fp32 (no native bf16): hours

    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"train": {"batch_size": 16}, "towers": ["siamese", "asymmetric"]}))
    loaded = CompareNegativesConfig.from_yaml(path)
    assert (loaded.train.batch_size, loaded.train.learning_rate, loaded.train.max_steps) == (16, 1e-4, 52)
    assert len(plan_study(loaded)) == 2 + 5 * 3 * 2
    for bad in ({"arms": ["bm25"]}, {"seeds": [1, 1]}, {"train": {"max_steps": -1}}, {"typo": 1}):
        with pytest.raises(ValidationError):
            CompareNegativesConfig.model_validate(bad)


def test_rates_follow_the_cpu_and_the_estimate_says_which(monkeypatch):
    import denseflow.model.encoder as encoder

    config = CompareNegativesConfig()
    monkeypatch.setattr(encoder, "native_bf16", lambda: True)
    assert cpu_rates(config).step_seconds_at_128 == config.estimate.bf16_step_seconds_at_128
    monkeypatch.setattr(encoder, "native_bf16", lambda: False)
    rates = cpu_rates(config)
    assert rates.step_seconds_at_128 == config.estimate.step_seconds_at_128
    assert "fp32" in rates.source
    assert "fp32" in estimate_study(config, 5183, 809, 300).describe().splitlines()[0]


def test_measured_rates_come_from_real_steps_on_this_cpu(tiny_beir_dir, tiny_model_dir):
    from denseflow.model.data.beir import RejectLog, load_beir

    train = {"base_model": str(tiny_model_dir), "batch_size": 4, "max_seq_length": 32, "precision": "fp32"}
    config = CompareNegativesConfig.model_validate({"train": train, "eval": {"batch_size": 8, "precision": "fp32"}})
    rates = measure_rates(config, load_beir(tiny_beir_dir, ["train"], RejectLog()), steps=2)
    assert rates.step_seconds_at_128 > 0
    assert rates.docs_per_second_at_128 > 0
    assert rates.source.startswith("measured")


def test_batch_sweep_uses_gradcache_and_labels_each_size():
    config = CompareNegativesConfig(arms=["random", "bm25-hard"], seeds=[0], batch_sizes=[16, 128])
    specs = plan_study(config)
    assert [spec.variant for spec in specs] == [
        "random/query_only/b16", "bm25-hard/query_only/b16", "random/query_only/b128", "bm25-hard/query_only/b128",
    ]  # fmt: skip
    settings = specs[-1].train_settings(config.train)
    assert (settings.batch_size, settings.loss, settings.seed) == (128, "cached_mnrl", 0)
    assert ArmSpec("random", "siamese", 32, 1).train_settings(config.train).loss == "mnrl"
    assert split_steps(40, 2) == [20, 20]
    assert split_steps(40, 3) == [13, 13, 14]


def test_run_config_sets_candidates_seed_and_towers_per_run():
    config = CompareNegativesConfig(arms=["zero-shot", "dense-remined"], towers=["asymmetric"], seeds=[7])
    untrained, remined = plan_study(config)
    assert run_config(config, untrained).train == config.train  # logged as is, not trained
    settings = run_config(config, remined)
    assert (settings.mining.candidates, settings.mining.seed, settings.train.seed) == ("dense", 7, 7)
    assert (settings.train.towers, settings.dense_rounds, settings.mix_dense_share) == ("asymmetric", 2, None)
    with pytest.raises(ValueError, match="not trained"):
        untrained.train_settings(config.train)
    with pytest.raises(ValueError):
        split_steps(1, 2)


def test_estimate_counts_encodings_steps_and_rounds():
    config = CompareNegativesConfig.model_validate(
        {"arms": ["random", "dense-remined"], "seeds": [0], "train": {"max_seq_length": 64}}
    )
    rates = Rates(docs_per_second_at_128=20.0, step_seconds_at_128=14.0, source="test")
    estimate = estimate_study(config, documents=5183, train_queries=809, test_queries=300, rates=rates)
    corpus, step = estimate.details["corpus_encoding_seconds"], estimate.details["step_seconds"]
    assert corpus == pytest.approx(5183 / 40)  # 64 tokens: twice the 128 rates
    assert step == pytest.approx(7.0)
    random_run, remined_run = (seconds for _, seconds in estimate.runs)
    # The re-mined arm: one more corpus encoding and run overhead, and the dense miner's query encodings
    # (2 rounds) on top of the teacher's (1 more round); the dev evaluations split over rounds round up.
    queries = 809 / 80
    extra = corpus + 15 + 2 * queries + queries
    assert remined_run - random_run == pytest.approx(extra, abs=2 * estimate.details["dev_evaluation_seconds"])
    assert estimate.shared_seconds == corpus  # base embeddings: teacher, zero-shot and dense round 1
    assert estimate.remaining_seconds(1, elapsed=2 * (corpus + random_run)) == pytest.approx(2 * remined_run)
    assert estimate.remaining_seconds(1, elapsed=1.0) == pytest.approx(remined_run)  # cached runs: no speed-up


def test_the_corpus_is_estimated_at_the_length_documents_are_read_at():
    """The study reads documents at their own length (256 for SciFact's model), not training's 128: a plan priced
    at 128 promised half the encoding time it took."""
    config = CompareNegativesConfig.model_validate({"arms": ["zero-shot"], "seeds": [0]})
    rates = Rates(docs_per_second_at_128=20.0, step_seconds_at_128=14.0, source="test")
    at_training_length = estimate_study(config, 5183, 809, 300, rates=rates)
    at_256 = estimate_study(config, 5183, 809, 300, rates=rates, document_length=256)
    assert at_256.details["corpus_encoding_seconds"] == pytest.approx(5183 / 10)
    assert at_256.total_seconds > at_training_length.total_seconds


def test_shipped_study_config_is_the_default():
    path = REPO / "deploy" / "configs" / "compare_negatives.yaml"
    assert CompareNegativesConfig.from_yaml(path) == CompareNegativesConfig()
