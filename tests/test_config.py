"""The configuration reference users read (`denseflow config FLOW`) shows the defaults each flow really runs with."""

from __future__ import annotations

from denseflow.model.config import CompareConfig, RetrainConfig, describe


def defaults_of(model: type) -> dict[str, str]:
    return {key: default for key, default, _ in describe(model)}


def test_study_reference_shows_the_study_training_defaults_not_the_retrain_ones() -> None:
    study, retrain = defaults_of(CompareConfig), defaults_of(RetrainConfig)
    assert (study["train.max_seq_length"], study["train.max_steps"]) == ("64", "40")
    assert (retrain["train.max_seq_length"], retrain["train.max_steps"]) == ("128", "-1")
    assert CompareConfig().train.max_steps == 40 and RetrainConfig().train.max_steps == -1


def test_every_nested_setting_is_listed_with_a_description() -> None:
    rows = describe(RetrainConfig)
    keys = [key for key, _, _ in rows]
    assert len(keys) == len(set(keys)) and {"data.path", "train.batch_size", "eval.precision"} <= set(keys)
    assert not [key for key, _, description in rows if key.startswith("train.") and not description]
