"""Run a model's query tower on ONNX Runtime, inside the same sentence-transformers pipeline.

Single-query encoding is latency-bound: PyTorch eager spends most of a short query's time in
small-matrix GEMMs and per-op dispatch, which ONNX Runtime's fused BERT graph cuts for *one short query*
(``bench/query_latency.py`` measures the ratio on the machine at hand; batch encoding is another matter, see
``model/onnx_runtime.py``). Only the transformer of the query tower is swapped; tokenisation, pooling,
normalisation and the Router that picks the tower stay sentence-transformers', so queries still go
through :func:`denseflow.model.encoder.encode` with ``role="query"`` for siamese and asymmetric models alike.

Why not sentence-transformers' own ``backend="onnx"``: it exports through ``optimum-onnx``, whose
releases pin ``transformers<4.58`` (sentence-transformers 6 needs 5.x), and it swaps the whole model,
where an asymmetric model needs only its query tower on ONNX.

The swap is checked before it is kept: probe queries of several lengths, alone and batched, must
encode to the same vectors as PyTorch (max abs difference ``tolerance``), else PyTorch stays. The int8
query tower (``precision="int8"``) cannot match that closely by design; it must keep every probe's cosine
to the PyTorch vector at ``min_cosine`` or more, else the fp32 session is tried, then PyTorch.

The export, quantization and session code lives in :mod:`denseflow.model.onnx_runtime`, shared with
int8 corpus encoding.
"""

from __future__ import annotations

import logging

import numpy as np
from sentence_transformers import SentenceTransformer

from denseflow.model import onnx_runtime
from denseflow.model.encoder import encode, is_asymmetric
from denseflow.model.onnx_runtime import OnnxPrecision
from denseflow.model.onnx_runtime import OnnxTransformer as OnnxTransformer

log = logging.getLogger(__name__)

PROBES = [
    "a",
    "vitamin d and multiple sclerosis",
    "ALDH1 expression is associated with poorer prognosis for breast cancer primary tumors.",
    "Do statins lower the risk of dementia in older adults?",
    "BRCA1 mutation carriers ovarian cancer risk reduction",
    " ".join(["long query about cell biology, gene expression and protein folding"] * 8),
]


def query_transformer(model: SentenceTransformer) -> object:
    """The sentence-transformers ``Transformer`` module that encodes queries."""
    if is_asymmetric(model):
        return model[0].sub_modules["query"][0]
    return model[0]


def use_onnx_for_queries(
    model: SentenceTransformer,
    threads: int | None = None,
    tolerance: float = 1e-4,
    precision: OnnxPrecision = "fp32",
    min_cosine: float = 0.99,
) -> str | None:
    """Swap the query tower's encoder for an ONNX Runtime session; returns the precision kept, or None.

    ``precision="int8"`` falls back to the fp32 session when int8 misses ``min_cosine`` on the probes, and
    both fall back to PyTorch (None) on any export or runtime failure.
    """
    if not onnx_runtime.available():
        log.info("onnxruntime not installed: queries are encoded with PyTorch")
        return None
    transformer = query_transformer(model)
    onnx_runtime.install(transformer, None)  # the reference below must come from PyTorch
    reference = encode(model, PROBES, "query")
    for candidate in ("int8", "fp32") if precision == "int8" else ("fp32",):
        try:
            onnx_runtime.install(transformer, onnx_runtime.onnx_module(transformer, candidate, threads))
            single = np.concatenate([encode(model, [probe], "query") for probe in PROBES])
            batched = encode(model, PROBES, "query")
            if candidate == "fp32":
                error = max(float(np.abs(single - reference).max()), float(np.abs(batched - reference).max()))
                if error > tolerance:
                    raise ValueError(f"ONNX query embeddings differ from PyTorch by {error:.2e} (> {tolerance:.0e})")
            else:
                cosine = min(float(np.sum(single * reference, 1).min()), float(np.sum(batched * reference, 1).min()))
                if cosine < min_cosine:
                    raise ValueError(f"int8 query embeddings reach cosine {cosine:.4f} to PyTorch (< {min_cosine})")
            return candidate
        except Exception as err:  # any exporter or runtime gap: PyTorch is always correct, only slower
            onnx_runtime.install(transformer, None)
            log.warning("ONNX Runtime %s not used for queries: %s", candidate, err)
    return None
