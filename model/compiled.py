"""bf16 corpus encoding through ``torch.compile`` (inductor, frozen weights): the same vectors, faster.

Profiled on a CPU with AMX-BF16 (``bench/profile_step.py --precision bf16``), eager bf16 spends about a
quarter of a 32-document batch in matmuls; the rest is the casts autocast inserts around them, fp32 layer
norm, GELU and residual adds. Inductor fuses those element-wise ops into the surrounding kernels, and
freezing folds the weights as constants (pre-packed once for oneDNN), so the matmuls are most of what is
left: ``bench/encode_throughput.py`` measures the gain against eager on the machine at hand.

Only the Hugging Face encoder inside the document tower's ``Transformer`` module is swapped, as
:mod:`denseflow.model.onnx_runtime` does for ONNX: tokenisation, length-sorted batching, pooling and
normalisation stay sentence-transformers'. Compiling costs tens of seconds per process, so a publication
compiles only when it has enough documents to encode (:func:`worth_compiling`). Freezing takes the weights
as they are at the first call, so this is for published models, never a model still training.

The compiled encoder is checked before it is used: probe documents must encode to the eager vectors (cosine
``min_cosine``); any failure (no C++ compiler, an inductor gap, a mismatch) leaves eager bf16 in place and
the reason is returned for the caller to record. Publication compiles its own copy of the model, once per
worker process (:func:`compiled_encoder`).
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import Literal

import numpy as np
import torch
from sentence_transformers import SentenceTransformer

from denseflow.model.encoder import load_encoder

log = logging.getLogger(__name__)

CompileSetting = Literal["auto", "on", "off"]
# Where the compile time is won back on the CPUs measured (docs/benchmarks.md, "Publication at corpus scale").
COMPILE_MIN_DOCS = 20_000

PROBE_DOCUMENTS = [
    "Vitamin D deficiency is associated with an increased risk of multiple sclerosis.",
    "a",
    " ".join(["Gene expression profiling of breast tumours identifies subtypes with distinct outcomes."] * 12),
    "Statins reduce cardiovascular events; their effect on dementia in older adults is less clear.",
]


def worth_compiling(setting: CompileSetting, precision: str, documents: int) -> bool:
    """Whether a publication encoding ``documents`` in ``precision`` should compile the document encoder."""
    if setting == "off" or precision != "bf16":
        return False
    return setting == "on" or documents >= COMPILE_MIN_DOCS


def frozen_compile(module: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile`` with inductor's freezing on at every trace and (re)compile of this module only.

    ``options={"freezing": True}`` reaches inductor but not dynamo, which then lifts the weights as graph
    inputs and nothing is folded, so freezing is patched on around the traced call itself.
    """
    compiled = torch.compile(module.eval(), dynamic=True)
    compiled.forward = torch._inductor.config.patch(freezing=True)(compiled.forward)
    return compiled


def compile_document_encoder(model: SentenceTransformer, min_cosine: float = 0.9999) -> str | None:
    """Swap the document tower's encoder for its compiled form, for good; returns None, or why it stays eager.

    For a model that only encodes from now on: freezing took its weights at the check. The check encodes the
    probes in bf16, eager then compiled, so its second call is also the compile.
    """
    from denseflow.model.encoder import encode, role_transformers

    transformers = role_transformers(model, "document")
    eager = [transformer.model for transformer in transformers]
    try:
        reference = encode(model, PROBE_DOCUMENTS, "document", precision="bf16")
        for transformer in transformers:
            transformer.model = frozen_compile(transformer.model)
        candidate = encode(model, PROBE_DOCUMENTS, "document", precision="bf16")
        cosine = float(np.sum(reference * candidate, axis=1).min())
        reason = (
            None if cosine >= min_cosine else f"compiled bf16 reaches cosine {cosine:.6f} to eager (< {min_cosine})"
        )
    except Exception as err:  # any inductor or compiler gap: eager bf16 is always correct, only slower
        reason = f"torch.compile failed: {type(err).__name__}: {err}".splitlines()[0]
    if reason:
        log.warning("document encoder stays eager: %s", reason)
        for transformer, module in zip(transformers, eager, strict=True):
            transformer.model = module
    return reason


_compile_lock = threading.Lock()


@functools.lru_cache(maxsize=2)
def _compiled_encoder_unlocked(model_dir: str, max_seq_length: int | None) -> tuple[SentenceTransformer, str | None]:
    model = load_encoder(model_dir, max_seq_length)
    return model, compile_document_encoder(model)


def compiled_encoder(model_dir: str, max_seq_length: int | None) -> tuple[SentenceTransformer, str | None]:
    """A copy of the model, its document tower compiled (or why not), once per process: shards in threads wait
    for the first to compile instead of compiling side by side."""
    with _compile_lock:
        return _compiled_encoder_unlocked(model_dir, max_seq_length)
