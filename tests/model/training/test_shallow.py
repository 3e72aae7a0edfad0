from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from denseflow.model.config import TrainConfig
from denseflow.model.data.beir import RejectLog, load_beir
from denseflow.model.encoder import (
    document_encoder_fingerprint,
    encode,
    load_encoder,
    make_asymmetric,
)
from denseflow.model.training.shallow import (
    check_query_layers,
    choose_depth,
    distill_query_tower,
    distillation_texts,
    folder_query_depth,
    query_tower_depth,
    tower_key,
    truncated_query_tower,
)


def test_a_shallow_tower_keeps_the_first_layers_and_the_document_tower(tiny_model_dir: Path, tmp_path: Path) -> None:
    teacher = make_asymmetric(load_encoder(tiny_model_dir))
    teacher.save(str(tmp_path / "teacher"))
    student = truncated_query_tower(teacher, 1)
    student.save(str(tmp_path / "student"))

    assert query_tower_depth(student) == 1 and folder_query_depth(tmp_path / "student") == 1
    assert query_tower_depth(teacher) == 2  # the teacher is not cut
    # The corpus embeddings stay valid: the document tower is the teacher's, so nothing is re-encoded.
    assert document_encoder_fingerprint(tmp_path / "student") == document_encoder_fingerprint(tmp_path / "teacher")
    texts = ["a document about cells", "another one"]
    np.testing.assert_allclose(encode(student, texts, "document"), encode(teacher, texts, "document"), atol=1e-6)


def test_a_depth_past_the_model_or_below_one_names_the_setting(tiny_model_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"train\.query_layers.*\[3\].*2 layers"):
        check_query_layers([1, 3], 2)
    with pytest.raises(ValidationError, match=r"train\.query_layers"):
        TrainConfig(query_layers=[0])
    assert TrainConfig(query_layers=3).query_layers == [3]


def test_distillation_brings_the_student_toward_the_full_tower(
    tiny_model_dir: Path, tiny_beir_dir: Path, tmp_path: Path
) -> None:
    dataset = load_beir(tiny_beir_dir, ["train"], RejectLog())
    texts = distillation_texts(dataset, "train", 200)
    settings = TrainConfig(query_distill_epochs=20, query_contrastive_epochs=0, precision="fp32", max_seq_length=32)
    teacher = load_encoder(tiny_model_dir)
    # A random BERT's last layer barely moves its embeddings; a trained one's does, which is what cutting loses.
    torch.manual_seed(0)
    for parameter in teacher[0].auto_model.encoder.layer[-1].parameters():
        parameter.data += 0.5 * torch.randn_like(parameter)
    teacher.save(str(tmp_path / "teacher"))
    probe = texts[:20]
    target = encode(teacher, probe, "query")
    before = encode(truncated_query_tower(teacher, 1), probe, "query")

    tower = distill_query_tower(tmp_path / "teacher", 1, texts, None, settings, tmp_path / "distilled")
    after = encode(load_encoder(tower.model_dir), probe, "query")

    assert folder_query_depth(tower.model_dir) == 1
    assert np.mean((after - target) ** 2) < 0.9 * np.mean((before - target) ** 2)


def test_distillation_texts_are_train_queries_then_corpus_pseudo_queries(tiny_beir_dir: Path) -> None:
    dataset = load_beir(tiny_beir_dir, ["train", "test"], RejectLog())
    train_queries = {dataset.queries[query_id] for query_id in dataset.qrels["train"]}
    test_queries = {dataset.queries[query_id] for query_id in dataset.qrels["test"]} - train_queries

    texts = distillation_texts(dataset, "train", len(train_queries) + 10)

    assert train_queries <= set(texts)
    assert not test_queries & set(texts)
    assert len(texts) == len(train_queries) + 10


def test_the_smallest_depth_within_the_tolerance_ships_and_small_dev_keeps_the_full_tower() -> None:
    dev = {2: 0.700, 3: 0.718, 6: 0.720}
    assert choose_depth(dev, 6, 0.005, can_choose=True).used == 3
    assert choose_depth(dev, 6, 0.03, can_choose=True).used == 2
    assert choose_depth({2: 0.6, 6: 0.72}, 6, 0.005, can_choose=True).used == 6
    prior = choose_depth(dev, 6, 0.03, can_choose=False, why_not="72 dev queries")
    assert prior.used == 6 and "72 dev queries" in prior.reason


def test_a_student_s_key_changes_with_what_its_distillation_reads_and_only_that(tiny_model_dir) -> None:
    settings = TrainConfig()
    key = tower_key(tiny_model_dir, 2, settings, ["q1", "q2"], "fp", b"examples")
    assert key == tower_key(tiny_model_dir, 2, settings.model_copy(update={"query_layers_tolerance": 0.5}),
                            ["q1", "q2"], "fp", b"examples")  # fmt: skip
    assert key != tower_key(tiny_model_dir, 3, settings, ["q1", "q2"], "fp", b"examples")
    assert key != tower_key(tiny_model_dir, 2, settings, ["q1"], "fp", b"examples")
    assert key != tower_key(tiny_model_dir, 2, settings, ["q1", "q2"], "fp", b"other examples")
