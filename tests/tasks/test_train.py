"""The train stage (tasks/train.py): hybrid-teacher distillation wired into training, reused and recorded."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from prefect.logging import disable_run_logger

from denseflow.model.config import HybridDistillConfig, TrackingConfig, TrainConfig
from denseflow.model.context import RunContext
from denseflow.model.mining.negatives import write_examples
from denseflow.tasks import train as train_task
from denseflow.tasks.tracking import configure_tracking
from tests.model.training.test_trainer import tiny_training_data


@pytest.fixture()
def context(tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    configure_tracking(TrackingConfig(tracking_uri=uri, experiment="test"), tmp_path)
    client = MlflowClient()
    run_id = client.create_run(client.get_experiment_by_name("test").experiment_id).info.run_id
    yield RunContext(workspace=tmp_path, run_id=run_id, precision="fp32", max_seq_length=32)
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


def settings_for(model_dir: Path, teacher: str) -> TrainConfig:
    return TrainConfig(
        base_model=str(model_dir),
        batch_size=4,
        epochs=1,
        max_seq_length=32,
        interpolation=1.0,
        hybrid_distill=HybridDistillConfig(queries="title", candidates=30, negatives=2, teacher=teacher),
    )


def test_too_small_a_corpus_skips_distillation_and_says_so_on_the_run(context, tiny_beir_dir, tiny_model_dir):
    dataset, examples = tiny_training_data(tiny_beir_dir)
    examples_path = write_examples(examples, context.workspace / "examples.jsonl")
    with disable_run_logger():
        labels = train_task.hybrid_teacher_labels(
            dataset,
            10,
            tiny_beir_dir,
            examples_path,
            settings_for(tiny_model_dir, "base"),
            "train",
            None,
            "fp",
            context,
        )
    assert labels == []
    assert "distillation skipped" in MlflowClient().get_run(context.run_id).data.tags["train.hybrid_distill"]


def test_a_trained_teacher_is_the_plain_recipes_training_reused_by_a_plain_run(
    context, tiny_beir_dir, tiny_model_dir, monkeypatch
):
    monkeypatch.setattr(train_task, "MIN_DOCUMENTS", 1)
    dataset, examples = tiny_training_data(tiny_beir_dir)
    examples_path = write_examples(examples, context.workspace / "examples.jsonl")
    settings = settings_for(tiny_model_dir, "trained")
    with disable_run_logger():
        distilled = train_task.trained_folder(tiny_beir_dir, examples_path, settings, "train", None, "fp", context)
        plain_settings = settings.model_copy(update={"hybrid_distill": HybridDistillConfig()})
        plain = train_task.trained_folder(tiny_beir_dir, examples_path, plain_settings, "train", None, "fp", context)
    trainings = sorted(path.name for path in (context.workspace / "training").iterdir() if path.is_dir())
    assert sorted([distilled.name, plain.name]) == trainings  # the plain run found the teacher's training
    assert '"distill_examples": 0' not in (distilled / "train_result.json").read_text()
    metrics = MlflowClient().get_run(context.run_id).data.metrics
    assert metrics["train.hybrid_distill.drawn"] >= metrics["train.hybrid_distill.kept"] > 0


def test_settings_added_later_change_the_training_key_only_when_set(tmp_path) -> None:
    examples = tmp_path / "examples.jsonl"
    examples.write_text('{"query_id": "q1"}\n')
    plain = train_task.training_key(examples, TrainConfig(), "fp", "dev")
    assert train_task.training_key(examples, TrainConfig(lora_rank=8), "fp", "dev") == plain
    assert train_task.training_key(examples, TrainConfig(adapter="lora"), "fp", "dev") != plain
    distilled = TrainConfig(hybrid_distill=HybridDistillConfig(queries="title"))
    assert train_task.training_key(examples, distilled, "fp", "dev") != plain
