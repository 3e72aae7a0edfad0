"""bf16 corpus encoding through torch.compile: the same vectors as eager, only the document tower, eager on any failure."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from denseflow.model.compiled import COMPILE_MIN_DOCS, compile_document_encoder, worth_compiling
from denseflow.model.encoder import encode, load_encoder, make_asymmetric

TEXTS = [f"{topic} study {i} about {topic} and more {topic}" for topic in ("heart", "brain", "gene") for i in range(6)]


def test_compile_only_for_bf16_and_a_corpus_large_enough_unless_asked() -> None:
    assert worth_compiling("auto", "bf16", COMPILE_MIN_DOCS)
    assert not worth_compiling("auto", "bf16", COMPILE_MIN_DOCS - 1)  # the compile would not be won back
    assert not worth_compiling("auto", "fp32", 10 * COMPILE_MIN_DOCS)
    assert not worth_compiling("on", "int8", 10)  # int8 runs on ONNX Runtime, not torch
    assert worth_compiling("on", "bf16", 10) and not worth_compiling("off", "bf16", 10 * COMPILE_MIN_DOCS)


@pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++")), reason="inductor on the CPU needs a C++ compiler")
def test_compiled_document_tower_encodes_as_eager(tiny_model_dir: Path) -> None:
    model = make_asymmetric(load_encoder(tiny_model_dir))
    query_tower, document_tower = (model[0].sub_modules[role][0] for role in ("query", "document"))
    eager_query, eager_document = query_tower.model, document_tower.model
    eager = encode(model, TEXTS, "document", batch_size=4, precision="bf16")
    assert compile_document_encoder(model) is None
    assert document_tower.model is not eager_document and query_tower.model is eager_query
    compiled = encode(model, TEXTS, "document", batch_size=4, precision="bf16")
    assert float(np.sum(eager * compiled, axis=1).min()) >= 0.9999


def test_a_compile_failure_leaves_eager_and_says_why(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = load_encoder(tiny_model_dir)
    eager_model = model[0].model

    def no_compiler(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", no_compiler)
    reason = compile_document_encoder(model)
    assert reason is not None and "no C++ compiler found" in reason
    assert model[0].model is eager_model
    assert encode(model, TEXTS[:2], "document", precision="bf16").shape[0] == 2
