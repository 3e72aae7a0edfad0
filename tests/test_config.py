"""The configuration reference users read (`denseflow config FLOW`) shows the defaults each flow really runs with."""

from __future__ import annotations

from denseflow.model.config import CompareConfig, RetrainConfig, describe


def defaults_of(model: type) -> dict[str, str]:
    return {key: default for key, default, _ in describe(model)}


def test_study_reference_shows_the_study_training_defaults_not_the_retrain_ones() -> None:
    study, retrain = defaults_of(CompareConfig), defaults_of(RetrainConfig)
    # Every trained arm: a fixed step budget at make run's sequence length, so arms compare at equal cost.
    assert study["train.max_steps"] == "80"
    assert study["train.max_seq_length"] == retrain["train.max_seq_length"] == "128"
    assert retrain["train.max_steps"] == "-1"
    assert CompareConfig().train.max_steps == 80
    assert RetrainConfig().train.max_steps == -1


def test_every_nested_setting_is_listed_with_a_description() -> None:
    rows = describe(RetrainConfig)
    keys = [key for key, _, _ in rows]
    assert len(keys) == len(set(keys))
    assert {"data.path", "train.batch_size", "eval.precision"} <= set(keys)
    assert not [key for key, _, description in rows if key.startswith("train.") and not description]
