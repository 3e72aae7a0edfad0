"""The evaluate stage's choices (tasks/evaluate.py): the recipe that ships, recorded on the run."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from prefect.logging import disable_run_logger

from denseflow.model.config import ChoicesConfig, EvalConfig, TrackingConfig
from denseflow.model.context import RunContext
from denseflow.tasks.evaluate import choose_recipe
from denseflow.tasks.tracking import configure_tracking


@pytest.fixture()
def run_id(tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    configure_tracking(TrackingConfig(tracking_uri=uri, experiment="test"), tmp_path)
    client = MlflowClient()
    yield client.create_run(client.get_experiment_by_name("test").experiment_id).info.run_id
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


def test_a_recipe_no_better_on_dev_than_the_prior_does_not_ship_and_the_choice_is_recorded(
    run_id: str, tmp_path: Path, tiny_model_dir: Path, tiny_beir_dir: Path
) -> None:
    context = RunContext(workspace=tmp_path, run_id=run_id, precision="fp32", max_seq_length=32)
    recipes = {"prior": str(tiny_model_dir), "siamese-free": str(tiny_model_dir)}  # the same system twice
    with disable_run_logger():
        chosen = choose_recipe.fn(recipes, tiny_beir_dir, "test", EvalConfig(), ChoicesConfig(), context)
    assert chosen == str(tiny_model_dir)
    run = MlflowClient().get_run(run_id)
    assert run.data.tags["choice.recipe.used"] == "prior"
    assert run.data.tags["choice.recipe.prior"] == "prior"
    assert {"recipe.prior.dev_served_ndcg_at_10", "recipe.siamese-free.dev_served_ndcg_at_10"} <= set(run.data.metrics)
    assert (tmp_path / "runs" / run_id / "choices.jsonl").read_text().count('"key": "recipe"') == 1
