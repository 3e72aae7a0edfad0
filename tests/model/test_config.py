"""The configuration reference users read (`denseflow config FLOW`) shows the defaults each flow really runs with."""

from __future__ import annotations

from denseflow.model.config import CompareNegativesConfig, RetrainConfig, describe
from tests.conftest import REPO


def defaults_of(model: type) -> dict[str, str]:
    return {key: default for key, default, _ in describe(model)}


def test_study_reference_shows_the_study_training_defaults_not_the_retrain_ones() -> None:
    study, retrain = defaults_of(CompareNegativesConfig), defaults_of(RetrainConfig)
    # Every trained arm: a fixed step budget on make run's recipe, so arms compare at equal cost.
    assert study["train.max_steps"] == "52"
    assert study["train.max_seq_length"] == retrain["train.max_seq_length"] == "128"
    assert study["train.learning_rate"] == retrain["train.learning_rate"]
    assert retrain["train.max_steps"] == "-1"
    assert CompareNegativesConfig().train.max_steps == 52
    assert RetrainConfig().train.max_steps == -1


def test_every_nested_setting_is_listed_with_a_description() -> None:
    rows = describe(RetrainConfig)
    keys = [key for key, _, _ in rows]
    assert len(keys) == len(set(keys))
    assert {"data.path", "train.batch_size", "eval.precision"} <= set(keys)
    assert not [key for key, _, description in rows if key.startswith("train.") and not description]


def test_a_section_override_changes_that_key_and_keeps_the_flows_own_defaults() -> None:
    # retrain mines BM25's top negatives without the teacher filter; one mining key must not turn the filter on.
    config = RetrainConfig.model_validate({"mining": {"rank_end": 20}})
    assert config.mining.rank_end == 20
    assert config.mining.teacher == "none"


def test_the_study_keeps_its_step_budget_when_its_train_section_is_overridden() -> None:
    config = CompareNegativesConfig.model_validate({"train": {"seed": 3}})
    assert (config.train.seed, config.train.max_steps) == (3, 52)


def test_removed_and_out_of_range_settings_are_named() -> None:
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="eval.baselines was removed"):
        RetrainConfig.model_validate({"eval": {"baselines": False}})
    with pytest.raises(ValidationError, match="interpolation"):
        RetrainConfig.model_validate({"train": {"interpolation": 1.5}})
    with pytest.raises(ValidationError, match="pseudo_query_ratio"):
        RetrainConfig.model_validate({"train": {"pseudo_query_ratio": -0.1}})
    with pytest.raises(ValidationError, match="interpolation_grid"):
        RetrainConfig.model_validate({"train": {"interpolation_grid": [0.5, 2.0]}})


def test_the_committed_configuration_reference_is_what_the_code_generates() -> None:

    from denseflow.cli.main import configuration_reference

    committed = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert committed == configuration_reference(), "regenerate: denseflow config --markdown > docs/configuration.md"


def test_a_qa_sized_dev_split_tries_the_freer_recipe_and_a_scifact_sized_one_does_not() -> None:
    """~870 train queries (QA over short passages) carve ~87 dev queries: enough to try the alternative recipes,
    whose paired test on dev decides; SciFact's 72 keep the prior without the extra training run."""
    choices = RetrainConfig().choices
    assert choices.recipes_to_try(87) == (["siamese-free"], "")
    tried, why = choices.recipes_to_try(72)
    assert tried == [] and "72 dev queries < choices.min_recipe_dev_queries 80" in why
    assert choices.recipes_to_try(500, can_choose=False)[0] == []
