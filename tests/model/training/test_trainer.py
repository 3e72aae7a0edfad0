"""Training with dev selection and crash-safe resume (model/training/trainer.py)."""

from __future__ import annotations

import json
from pathlib import Path

from denseflow.model.config import TrainConfig
from denseflow.model.data.beir import Dataset, RejectLog, load_beir
from denseflow.model.data.dev import carve_dev_split
from denseflow.model.mining.negatives import Negative, TrainExample
from denseflow.model.training.trainer import (
    TrainResult,
    last_complete_checkpoint,
    train_bi_encoder,
    training_record,
)


def make_checkpoint(folder: Path, step: int, complete: bool) -> Path:
    checkpoint = folder / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    (checkpoint / "model.safetensors").write_bytes(b"weights")
    if complete:
        (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return checkpoint


def tiny_training_data(beir_dir: Path) -> tuple[Dataset, list[TrainExample]]:
    """The tiny dataset with a quarter of its train queries carved into dev, and one random negative per pair."""
    dataset = load_beir(beir_dir, ["train"], RejectLog())
    assert carve_dev_split(dataset, "train", "dev", 0.25, 20).queries > 0
    doc_ids = list(dataset.corpus)
    examples = [
        TrainExample(query_id=qid, positive_id=doc_id, negatives=[Negative(doc_ids[-1], None, None, "random")])
        for qid, judged in dataset.qrels["train"].items()
        for doc_id in judged
    ]
    return dataset, examples


def test_resume_skips_a_checkpoint_cut_short_by_a_crash(tmp_path):
    make_checkpoint(tmp_path, 2, complete=True)
    make_checkpoint(tmp_path, 4, complete=False)
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    assert not (tmp_path / "checkpoint-4").exists()
    assert len(list(tmp_path.glob("incomplete-checkpoint-4-*"))) == 1


def test_a_truncated_trainer_state_counts_as_incomplete(tmp_path):
    checkpoint = make_checkpoint(tmp_path, 6, complete=False)
    (checkpoint / "trainer_state.json").write_text('{"global_st')
    assert last_complete_checkpoint(tmp_path) is None


def test_no_checkpoint_folder_means_a_fresh_start(tmp_path):
    assert last_complete_checkpoint(tmp_path / "missing") is None


def test_training_with_dev_records_the_curve_and_chooses_checkpoint_and_alpha_under_the_rule(
    tmp_path, tiny_beir_dir, tiny_model_dir
):
    dataset, examples = tiny_training_data(tiny_beir_dir)
    settings = TrainConfig(
        base_model=str(tiny_model_dir), batch_size=4, epochs=2, max_seq_length=32, evals_per_epoch=2, patience=10
    )
    result = train_bi_encoder(examples, dataset, settings, tmp_path / "out", dev_split="dev", progress=False)
    assert result.dev_split == "dev"
    assert result.dev_curve[0][0] == 0  # the base model's dev figure, before any step
    assert len(result.dev_curve) >= 3
    assert result.best_step is not None
    assert result.best_dev_ndcg == max(value for step, value in result.dev_curve if step > 0)
    assert (result.model_dir / "modules.json").is_file()
    checkpoint, alpha = result.choices
    assert (checkpoint["name"], checkpoint["prior"]) == ("checkpoint", "last")
    # The step merged and saved is the one the checkpoint choice used (the plot marks it).
    assert result.used_step == (result.best_step if checkpoint["used"] == "best" else result.steps)
    assert (alpha["name"], alpha["prior"]) == ("interpolation", "0.5")
    assert f"{result.interpolation:g}" == alpha["used"]
    # A handful of dev queries cannot overrule a prior (or it is dev's best anyway).
    assert alpha["used"] == "0.5" or alpha["p_value"] < 0.05
    assert [point[0] for point in result.interpolation_curve] == [0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0]
    result.write(tmp_path / "out")
    assert training_record(result.model_dir) == result  # the record beside the model folder, read back typed


def test_a_record_written_before_a_field_existed_reads_with_its_default(tmp_path):
    """Trainings cached in a workspace by an older denseflow are reused: their records must still read."""
    (tmp_path / "model").mkdir()
    record = {"model_dir": str(tmp_path / "model"), "steps": 52, "seconds": 300.0, "resumed_from": None}
    record |= {"precision": "bf16", "dev_curve": [[0, 0.6], [13, 0.65]], "median_step_seconds": 5.0}
    (tmp_path / "train_result.json").write_text(json.dumps(record))
    result = training_record(tmp_path / "model")
    assert result is not None and result.used_step is None and result.selection == "none (no dev split)"
    assert result.dev_curve == [(0, 0.6), (13, 0.65)]
    assert training_record(tmp_path / "elsewhere" / "model") is None  # a base model has no record
    assert isinstance(result, TrainResult)


def test_the_logged_figures_name_dev_s_best_step_only_when_dev_was_read(tmp_path):
    plain = TrainResult(tmp_path / "model", 10, 20.0, None, "fp32", step_seconds=[2.0, 1.0, 3.0])
    assert plain.summary_metrics() == {"steps": 10, "seconds": 20.0, "median_step_seconds": 2.0, "interpolation": 1.0}
    with_dev = TrainResult(tmp_path / "model", 10, 20.0, None, "fp32", best_step=5, best_dev_ndcg=0.7)
    assert with_dev.summary_metrics()["best_step"] == 5


def test_the_alpha_curve_becomes_two_histories_indexed_by_position(tmp_path):
    record = TrainResult(tmp_path / "model", 10, 20.0, None, "fp32", interpolation_curve=[(0.0, 0.6), (0.5, 0.7)])
    histories = record.metric_histories()
    assert histories["interpolation_alpha"] == [(0, 0.0), (1, 0.5)]
    assert histories["interpolation_dev_ndcg_at_10"] == [(0, 0.6), (1, 0.7)]


def test_when_dev_cannot_tell_the_candidates_apart_the_priors_stand(tmp_path, tiny_beir_dir, tiny_model_dir):
    dataset, examples = tiny_training_data(tiny_beir_dir)
    # A learning rate below fp32's resolution: the weights never move, so every candidate scores the same on dev.
    settings = TrainConfig(
        base_model=str(tiny_model_dir), batch_size=4, epochs=1, max_seq_length=32, learning_rate=1e-30, patience=10
    )
    result = train_bi_encoder(examples, dataset, settings, tmp_path / "out", dev_split="dev", progress=False)
    assert [choice["used"] for choice in result.choices] == ["last", "0.5"]
    assert all(choice["p_value"] is None for choice in result.choices)  # the prior ties dev's best: nothing to test
    assert result.interpolation == 0.5 and not result.kept_base_model
    assert (result.model_dir / "modules.json").is_file()


def test_the_best_checkpoint_is_kept_only_when_it_beats_the_last_by_the_paired_test(monkeypatch) -> None:
    from denseflow.model.training import trainer

    best, last = object(), object()
    queries = [f"q{i}" for i in range(40)]
    clear = {id(best): dict.fromkeys(queries, 0.9), id(last): dict.fromkeys(queries, 0.1)}
    monkeypatch.setattr(trainer, "per_query_dev_ndcg", lambda model, *args: clear[id(model)])
    chosen, choice = trainer.choose_checkpoint(best, last, None, "fp32")
    assert chosen is best and choice.used == "best" and choice.p_value < 0.05
    noise = {id(best): {q: 0.5 + (0.01 if i % 2 else -0.009) for i, q in enumerate(queries)}, id(last): {}}
    noise[id(last)] = {q: 0.5 for q in queries}
    monkeypatch.setattr(trainer, "per_query_dev_ndcg", lambda model, *args: noise[id(model)])
    chosen, choice = trainer.choose_checkpoint(best, last, None, "fp32")
    assert chosen is last and choice.used == "last" and choice.dev_winner == "best" and choice.p_value >= 0.05


def test_a_stopped_run_with_dev_selection_resumes_from_its_checkpoint(tmp_path, tiny_beir_dir, tiny_model_dir):
    dataset, examples = tiny_training_data(tiny_beir_dir)
    common = {"base_model": str(tiny_model_dir), "batch_size": 4, "max_seq_length": 32, "patience": 10}
    # The first attempt stops after 2 steps (as if killed right after its first dev checkpoint) ...
    first = train_bi_encoder(
        examples, dataset, TrainConfig(**common, max_steps=2, evals_per_epoch=2), tmp_path / "out", "dev", False
    )
    assert first.steps == 2
    # ... and the re-run continues from checkpoint-2 instead of starting over.
    second = train_bi_encoder(
        examples, dataset, TrainConfig(**common, max_steps=4, evals_per_epoch=2), tmp_path / "out", "dev", False
    )
    assert second.resumed_from == str(tmp_path / "out" / "checkpoints" / "checkpoint-2")
    assert second.steps == 4
