"""Run a model's query tower on ONNX Runtime, inside the same sentence-transformers pipeline.

Single-query encoding is latency-bound: PyTorch eager spends most of a short query's time in
small-matrix GEMMs and per-op dispatch, where ONNX Runtime's fused BERT graph is about 2-3x faster
on this CPU. Only the transformer of the query tower is swapped; tokenisation, pooling,
normalisation and the Router that picks the tower stay sentence-transformers', so queries still go
through :func:`denseflow.model.encoder.encode` with ``role="query"`` for siamese and asymmetric models alike.

Why not sentence-transformers' own ``backend="onnx"``: it exports through ``optimum-onnx``, whose
releases pin ``transformers<4.58`` (sentence-transformers 6 needs 5.x), and it swaps the whole model,
where an asymmetric model needs only its query tower on ONNX.

The swap is checked before it is kept: probe queries of several lengths, alone and batched, must
encode to the same vectors as PyTorch (max abs difference ``tolerance``), else PyTorch stays.
"""

from __future__ import annotations

import io
import logging
import warnings
from typing import Any

import numpy as np
import torch
from denseflow.model.encoder import encode, is_asymmetric
from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

PROBES = [
    "a",
    "vitamin d and multiple sclerosis",
    "ALDH1 expression is associated with poorer prognosis for breast cancer primary tumors.",
    " ".join(["long query about cell biology, gene expression and protein folding"] * 8),
]


class OnnxTransformer(torch.nn.Module):
    """Stands in for a Hugging Face encoder: same keyword inputs, ``{"last_hidden_state": ...}`` out."""

    def __init__(self, session: Any, input_names: list[str], config: Any) -> None:
        super().__init__()
        self.session = session
        self.input_names = input_names
        self.config = config
        self.device = torch.device("cpu")

    def forward(self, **inputs: Any) -> dict[str, torch.Tensor]:
        feed = {name: inputs[name].numpy() for name in self.input_names}
        (hidden,) = self.session.run(["last_hidden_state"], feed)
        return {"last_hidden_state": torch.from_numpy(hidden)}


class _Export(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, tensors, strict=True)), return_dict=True).last_hidden_state


def query_transformer(model: SentenceTransformer) -> Any:
    """The sentence-transformers ``Transformer`` module that encodes queries."""
    if is_asymmetric(model):
        return model[0].sub_modules["query"][0]
    return model[0]


def use_onnx_for_queries(model: SentenceTransformer, threads: int | None = None, tolerance: float = 1e-4) -> bool:
    """Swap the query tower's transformer for an ONNX Runtime session; False (PyTorch kept) on any failure."""
    try:
        import onnxruntime as ort
    except ImportError:
        log.info("onnxruntime not installed: queries are encoded with PyTorch")
        return False
    transformer = query_transformer(model)
    hf_model = transformer.model
    reference = encode(model, PROBES, "query")
    try:
        features = model.preprocess(PROBES[1:2])
        names = [name for name in ("input_ids", "attention_mask", "token_type_ids") if name in features]
        buffer = io.BytesIO()
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _Export(hf_model.eval(), names),
                tuple(features[name] for name in names),
                buffer,
                input_names=names,
                output_names=["last_hidden_state"],
                dynamic_axes={name: {0: "batch", 1: "tokens"} for name in [*names, "last_hidden_state"]},
                opset_version=17,
                dynamo=False,
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
        transformer.model = OnnxTransformer(session, names, hf_model.config)
        single = np.concatenate([encode(model, [probe], "query") for probe in PROBES])
        batched = encode(model, PROBES, "query")
        error = max(float(np.abs(single - reference).max()), float(np.abs(batched - reference).max()))
        if error > tolerance:
            raise ValueError(f"ONNX query embeddings differ from PyTorch by {error:.2e} (> {tolerance:.0e})")
    except Exception as err:  # any exporter or runtime gap: PyTorch is always correct, only slower
        transformer.model = hf_model
        log.warning("ONNX Runtime not used for queries: %s", err)
        return False
    return True
