"""A LoRA adapter as the trained part, merged back into plain weights (model/training/lora.py)."""

from __future__ import annotations

import torch

from denseflow.model.config import TrainConfig
from denseflow.model.encoder import load_encoder
from denseflow.model.training.lora import add_lora, load_adapted_checkpoint, merge_lora
from denseflow.model.training.trainer import build_model, train_bi_encoder
from tests.model.training.test_trainer import tiny_training_data


def test_only_the_adapter_trains_and_merging_reproduces_the_adapted_model(tiny_model_dir) -> None:
    settings = TrainConfig(base_model=str(tiny_model_dir), max_seq_length=32)
    model = add_lora(build_model(settings), "query_only", rank=4)
    trainable = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    assert trainable and all("lora_" in name and ".query." in name for name in trainable)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:  # B starts at zero: give the adapter something to merge
                parameter.add_(0.05)
    model.eval()
    adapted = model.encode(["a query about cells"], convert_to_tensor=True)
    merged = merge_lora(model, build_model(settings))
    merged.eval()
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert torch.allclose(merged.encode(["a query about cells"], convert_to_tensor=True), adapted, atol=1e-5)


def test_a_lora_training_with_dev_selection_saves_a_plain_model(tmp_path, tiny_beir_dir, tiny_model_dir) -> None:
    dataset, examples = tiny_training_data(tiny_beir_dir)
    settings = TrainConfig(
        base_model=str(tiny_model_dir),
        batch_size=4,
        epochs=2,
        max_seq_length=32,
        evals_per_epoch=2,
        patience=10,
        adapter="lora",
        lora_rank=4,
        learning_rate=1e-3,
    )
    result = train_bi_encoder(examples, dataset, settings, tmp_path / "out", dev_split="dev", progress=False)
    assert result.best_step is not None and result.dev_curve
    saved = load_encoder(result.model_dir)
    assert not any("lora" in name for name, _ in saved.named_parameters())


def test_an_adapted_checkpoint_reloads_into_the_adapted_model(tmp_path, tiny_model_dir) -> None:
    settings = TrainConfig(base_model=str(tiny_model_dir), max_seq_length=32)
    model = add_lora(build_model(settings), "query_only", rank=4)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.fill_(0.03)
    model.save(str(tmp_path / "checkpoint-7"))
    saved = {name: value.clone() for name, value in model.state_dict().items()}
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.zero_()
    load_adapted_checkpoint(model, tmp_path / "checkpoint-7")
    assert all(torch.equal(value, saved[name]) for name, value in model.state_dict().items())
