"""The study's plan: runs in order, per-run settings, steps split over rounds, the time estimate, config checks."""

from __future__ import annotations

import pytest
import yaml
from denseflow.model.config import CompareConfig
from denseflow.model.evaluation.study import ArmSpec, estimate_study, plan_study, run_config, split_steps
from pydantic import ValidationError


def test_config_defaults_fit_the_budget_and_yaml_overrides_keys(tmp_path):
    config = CompareConfig()
    assert (config.train.max_seq_length, config.train.max_steps, config.seeds) == (64, 40, [0, 1, 2])
    specs = plan_study(config)
    assert [spec.slug for spec in specs[:3]] == ["zero-shot", "bm25-alone", "random_siamese_seed0"]
    assert len(specs) == 2 + 3 * 3
    # SciFact: 5,183 documents, 809 train and 300 test queries.
    assert estimate_study(config, 5183, 809, 300).total_seconds / 60 < config.estimate.budget_minutes

    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"train": {"batch_size": 16}, "towers": ["siamese", "asymmetric"]}))
    loaded = CompareConfig.from_yaml(path)
    assert (loaded.train.batch_size, loaded.train.max_seq_length, loaded.train.max_steps) == (16, 64, 40)
    assert len(plan_study(loaded)) == 2 + 3 * 3 * 2
    for bad in ({"arms": ["bm25"]}, {"seeds": [1, 1]}, {"train": {"max_steps": -1}}, {"typo": 1}):
        with pytest.raises(ValidationError):
            CompareConfig.model_validate(bad)


def test_batch_sweep_uses_gradcache_and_labels_each_size():
    config = CompareConfig(arms=["random", "bm25-hard"], seeds=[0], batch_sizes=[16, 128])
    specs = plan_study(config)
    assert [spec.variant for spec in specs] == [
        "random/siamese/b16", "bm25-hard/siamese/b16", "random/siamese/b128", "bm25-hard/siamese/b128",
    ]  # fmt: skip
    settings = specs[-1].train_settings(config.train)
    assert (settings.batch_size, settings.loss, settings.seed) == (128, "cached_mnrl", 0)
    assert ArmSpec("random", "siamese", 32, 1).train_settings(config.train).loss == "mnrl"
    assert split_steps(40, 2) == [20, 20] and split_steps(40, 3) == [13, 13, 14]


def test_run_config_sets_strategy_seed_and_towers_per_run():
    config = CompareConfig(arms=["zero-shot", "mix-hard"], towers=["asymmetric"], seeds=[7])
    untrained, mixed = plan_study(config)
    assert run_config(config, untrained).train == config.train  # logged as is, not trained
    settings = run_config(config, mixed)
    assert (settings.mining.strategy, settings.mining.seed, settings.train.seed) == ("dense", 7, 7)
    assert (settings.train.towers, settings.dense_rounds, settings.mix_dense_share) == ("asymmetric", 2, 0.5)
    with pytest.raises(ValueError, match="not trained"):
        untrained.train_settings(config.train)
    with pytest.raises(ValueError):
        split_steps(1, 2)


def test_estimate_counts_encodings_and_steps():
    config = CompareConfig(arms=["random", "dense-hard"], seeds=[0])
    estimate = estimate_study(config, documents=5183, train_queries=809, test_queries=300)
    corpus, step = estimate.details["corpus_encoding_seconds"], estimate.details["step_seconds"]
    assert corpus == pytest.approx(5183 / 40) and step == pytest.approx(7.0)  # 64 tokens: twice the 128 rates
    random_run, dense_run = (seconds for _, seconds in estimate.runs)
    assert dense_run - random_run == pytest.approx(corpus + 15 + 2 * 809 / 80, rel=1e-6)  # re-mining round
    assert estimate.shared_seconds == corpus  # base embeddings for dense round 1
    assert estimate.remaining_seconds(1, elapsed=2 * (corpus + random_run)) == pytest.approx(2 * dense_run)
    assert estimate.remaining_seconds(1, elapsed=1.0) == pytest.approx(dense_run)  # cached runs: no speed-up


def test_shipped_study_config_is_the_default():
    from pathlib import Path

    path = Path(__file__).parents[1] / "deploy" / "configs" / "compare_negatives.yaml"
    assert CompareConfig.from_yaml(path) == CompareConfig()
