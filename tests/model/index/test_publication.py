"""The precision a publication encodes in: kept only where it agrees with fp32 on a sample, the check recorded."""

from __future__ import annotations

import numpy as np

from denseflow.model.config import EncodeConfig
from denseflow.model.index.publication import decide_precision


def unit_rows(rows: int, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(rows, 16)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


TEXTS = [f"document {i}" for i in range(40)]


def test_bf16_is_kept_when_it_agrees_and_the_check_is_not_run_twice(tmp_path):
    calls = []

    def encode_documents(texts, precision):
        calls.append(precision)
        return unit_rows(len(texts))  # bf16 identical to fp32 here

    settings = EncodeConfig()
    first = decide_precision("auto", "bf16", TEXTS, "enc", settings, tmp_path, encode_documents)
    second = decide_precision("auto", "bf16", TEXTS, "enc", settings, tmp_path, encode_documents)
    assert (first.precision, first.fallback, first.sample_docs) == ("bf16", None, 40)
    assert second == first
    assert calls == ["fp32", "bf16"]  # the second publication read the recorded figures


def test_a_precision_that_drifts_or_fails_falls_back_to_fp32_with_the_reason(tmp_path):
    def drifting(texts, precision):
        return unit_rows(len(texts), seed=0 if precision == "fp32" else 1)

    drifted = decide_precision("int8", "int8", TEXTS, "enc", EncodeConfig(), tmp_path, drifting)
    assert drifted.precision == "fp32" and "int8_min_mean_cosine" in drifted.fallback

    def failing(texts, precision):
        if precision != "fp32":
            raise RuntimeError("no ONNX export")
        return unit_rows(len(texts))

    failed = decide_precision("int8", "int8", TEXTS, "other", EncodeConfig(), tmp_path, failing)
    assert failed.precision == "fp32" and "no ONNX export" in failed.fallback
    assert decide_precision("fp32", "fp32", TEXTS, "enc", EncodeConfig(), tmp_path, failing).precision == "fp32"
