"""Data-parallel training under torchrun (2 CPU processes, gloo) equals one process at the same global batch."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from denseflow.model.config import TrainConfig
from denseflow.model.data.beir import RejectLog, load_beir
from denseflow.model.encoder import load_encoder
from denseflow.model.mining.negatives import mine_negatives
from denseflow.model.training import distributed
from denseflow.model.training.trainer import train_bi_encoder


def without_dropout(model_dir: Path, target: Path) -> Path:
    """The tiny model with dropout off: each process draws its own dropout masks, which no tolerance could absorb."""
    shutil.copytree(model_dir, target)
    for config_path in target.rglob("config.json"):
        config = json.loads(config_path.read_text())
        if "hidden_dropout_prob" in config:
            config["hidden_dropout_prob"] = config["attention_probs_dropout_prob"] = 0.0
            config_path.write_text(json.dumps(config))
    return target


def test_per_process_batch_size_splits_the_global_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    assert distributed.per_process_batch_size(8) == 8
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed.per_process_batch_size(8) == 4
    with pytest.raises(ValueError, match="not divisible"):
        distributed.per_process_batch_size(7)


def test_two_gloo_processes_match_one_process_at_the_same_global_batch(
    tiny_model_dir: Path, tiny_beir_dir: Path, tmp_path: Path
) -> None:
    model_dir = without_dropout(tiny_model_dir, tmp_path / "no-dropout")
    dataset = load_beir(tiny_beir_dir, ["train"], RejectLog())
    mined, _ = mine_negatives(dataset, "train", num_negatives=1, seed=0)
    # (query, positive) pairs only: a mined negative can be another row's positive, and the no-duplicates
    # sampler then composes a batch of 8 differently from two batches of 4 (it checks within a process only).
    examples = [replace(example, negatives=[]) for example in mined]
    settings = TrainConfig(
        base_model=str(model_dir), batch_size=8, max_steps=2, learning_rate=1e-3, warmup_ratio=0,
        max_seq_length=32, precision="fp32", save_steps=1, seed=0, interpolation=1.0, towers="siamese",
    )  # fmt: skip
    single = train_bi_encoder(examples, dataset, settings, tmp_path / "one", progress=False)
    parallel = distributed.train(
        examples, dataset, settings.model_copy(update={"launcher": "torchrun", "nproc_per_node": 2}), tmp_path / "two"
    )

    assert parallel.steps == single.steps == 2
    # Logged losses are the mean over processes of each one's local loss against the gathered global batch.
    assert [step for step, _ in parallel.loss_history] == [step for step, _ in single.loss_history]
    for (_, two), (_, one) in zip(parallel.loss_history, single.loss_history, strict=True):
        assert two == pytest.approx(one, rel=1e-4)
    trained_one = load_encoder(single.model_dir).state_dict()
    trained_two = load_encoder(parallel.model_dir).state_dict()
    base = load_encoder(model_dir).state_dict()
    moved = max(float((trained_one[name] - base[name]).abs().max()) for name in base)
    differ = max(float((trained_two[name] - trained_one[name]).abs().max()) for name in base)
    print(f"weights moved by up to {moved:.2e}; the two runs differ by up to {differ:.2e}")
    assert moved > 1e-3  # training did move the weights ...
    assert differ < 1e-4  # ... and both runs moved them alike
    assert all(torch.isfinite(tensor).all() for tensor in trained_two.values())


def test_data_parallel_training_of_a_router_model_is_refused_with_the_setting_named() -> None:
    with pytest.raises(ValueError, match="train.towers: siamese"):
        TrainConfig(launcher="torchrun", nproc_per_node=2, towers="query_only")
