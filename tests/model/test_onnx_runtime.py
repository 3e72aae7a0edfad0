"""int8 encoding (ONNX Runtime dynamic quantization): the encoder path, its quality check in publication, the query tower."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from denseflow.model.config import DataConfig, EncodeConfig, IndexConfig, PublishConfig
from denseflow.model.encoder import encode, load_encoder, make_asymmetric
from denseflow.model.index.build import embedding_agreement
from denseflow.model.index.store import load_current

TEXTS = [f"{topic} study {i} about {topic} and more {topic}" for topic in ("heart", "brain", "gene") for i in range(8)]


def test_int8_encodes_close_to_fp32_and_leaves_the_model_on_pytorch(tiny_model_dir: Path) -> None:
    model = load_encoder(tiny_model_dir)
    reference = encode(model, TEXTS, "document", batch_size=8, precision="fp32")
    int8 = encode(model, TEXTS, "document", batch_size=8, precision="int8")
    assert int8.shape == reference.shape and int8.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(int8, axis=1), 1.0, atol=1e-5)
    agreement = embedding_agreement(reference, int8)
    assert 0.9 < agreement["mean_cosine"] < 1.0  # quantized: close, yet not the fp32 vectors
    # The swap lasts only for the call: the next fp32 encode is PyTorch's again.
    np.testing.assert_array_equal(encode(model, TEXTS, "document", batch_size=8, precision="fp32"), reference)


def test_int8_runs_only_the_towers_role(tiny_model_dir: Path) -> None:
    model = make_asymmetric(load_encoder(tiny_model_dir))
    query_tower = model[0].sub_modules["query"][0]
    document_tower = model[0].sub_modules["document"][0]
    before = (query_tower.model, document_tower.model)
    encode(model, TEXTS[:4], "document", precision="int8")
    assert "_denseflow_onnx" in document_tower.__dict__ and "_denseflow_onnx" not in query_tower.__dict__
    assert (query_tower.model, document_tower.model) == before


def publish_config(workspace: Path, model_dir: Path, beir_dir: Path, **encode: object) -> PublishConfig:
    return PublishConfig(
        workspace=workspace,
        model=str(model_dir),
        data=DataConfig(path=beir_dir),
        encode=EncodeConfig(shard_size=10, batch_size=8, precision="int8", check_sample_docs=36, **encode),
        index=IndexConfig(name="tiny"),
    )


@pytest.mark.usefixtures("prefect_harness")
def test_publication_keeps_int8_when_it_passes_and_falls_back_to_fp32_when_not(
    tiny_model_dir: Path, tiny_beir_dir: Path, tmp_path: Path
) -> None:
    from denseflow.flows.publish_index import run_publish

    # Floors the tiny random model meets: int8 is kept and the manifest says so with its figures.
    kept = run_publish(
        publish_config(
            tmp_path / "kept", tiny_model_dir, tiny_beir_dir, int8_min_mean_cosine=0.5, int8_min_neighbour_recall=0.0
        )
    )
    assert kept.precision == "int8" and kept.precision_fallback is None
    encode_section = load_current(tmp_path / "kept" / "indexes", "tiny").manifest["encode"]
    assert encode_section["precision"] == "int8" and encode_section["requested"] == "int8"
    assert encode_section["neighbour_recall"] >= 0.0 and encode_section["sample_docs"] == 36
    assert list((tmp_path / "kept" / "cache" / "embeddings").glob("*-int8/seg-*.npz"))  # cached as int8 vectors

    # A floor nothing quantized can meet: publication encodes in fp32 and records why.
    fallback = run_publish(
        publish_config(tmp_path / "fallback", tiny_model_dir, tiny_beir_dir, int8_min_mean_cosine=1.0)
    )
    assert fallback.precision == "fp32" and "int8_min_mean_cosine" in fallback.precision_fallback
    encode_section = load_current(tmp_path / "fallback" / "indexes", "tiny").manifest["encode"]
    assert encode_section["precision"] == "fp32" and encode_section["requested"] == "int8"
    assert "int8_min_mean_cosine" in encode_section["fallback"]
    reference = encode(load_encoder(tiny_model_dir), ["heart study 0"], "document")
    assert reference.shape[1] == load_current(tmp_path / "fallback" / "indexes", "tiny").index.d


def test_int8_query_tower_is_checked_and_falls_back(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from denseflow.model.onnx_runtime import OnnxTransformer
    from denseflow.model.serving import onnx_backend

    model = load_encoder(tiny_model_dir)
    assert onnx_backend.use_onnx_for_queries(model, threads=1, precision="int8", min_cosine=0.5) == "int8"
    swapped = onnx_backend.query_transformer(model).model
    assert isinstance(swapped, OnnxTransformer) and swapped.precision == "int8"

    fresh = load_encoder(tiny_model_dir)
    # No quantized vector reaches cosine 1.01: int8 is refused and the fp32 session is kept instead.
    assert onnx_backend.use_onnx_for_queries(fresh, threads=1, precision="int8", min_cosine=1.01) == "fp32"
    assert onnx_backend.query_transformer(fresh).model.precision == "fp32"
