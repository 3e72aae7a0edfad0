"""One ONNX export of a sentence-transformers ``Transformer`` module, run by ONNX Runtime in fp32 or int8.

Both users share this: the query tower at search time (:mod:`denseflow.model.serving.onnx_backend`, fp32 or
int8) and corpus encoding (:func:`denseflow.model.encoder.encode` with ``precision="int8"``). Only the
Hugging Face encoder inside the module is replaced; tokenisation, pooling, normalisation and the Router
stay sentence-transformers', so every caller still encodes through ``encode``.

int8 is ONNX Runtime *dynamic* quantization: weights are stored as per-channel int8 once, activations are
quantized per batch at run time, so it needs no calibration data. The plain export is quantized, not one
pre-fused by ONNX Runtime's BERT optimizer for *batch corpus encoding*: there the pre-fused graphs were not
faster (``bench/encode_throughput.py``), and the session applies its own fusions at load time anyway. int8 drifts from fp32 (on
all-MiniLM-L6-v2 about 0.994 mean cosine), so its callers check it before use.

Why not OpenVINO (sentence-transformers' other int8 backend): it exports through ``optimum-intel``, which,
like ``optimum-onnx``, pins a transformers release older than sentence-transformers 6 requires; ONNX
Runtime is already a dependency.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

log = logging.getLogger(__name__)

OnnxPrecision = Literal["fp32", "int8"]
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
_ATTRIBUTE = "_denseflow_onnx"  # per-Transformer-module cache of built sessions, by precision and threads
_lock = threading.Lock()


class OnnxTransformer(torch.nn.Module):
    """Stands in for a Hugging Face encoder: same keyword inputs, ``{"last_hidden_state": ...}`` out."""

    def __init__(self, session: Any, input_names: list[str], config: Any, precision: OnnxPrecision) -> None:
        super().__init__()
        self.session = session
        self.input_names = input_names
        self.config = config
        self.precision = precision
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


def available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def torch_model(transformer: Any) -> torch.nn.Module:
    """The PyTorch encoder of a ``Transformer`` module, even while an ONNX session stands in for it."""
    return getattr(transformer, "_denseflow_torch_model", None) or transformer.model


def export_fp32(transformer: Any) -> tuple[bytes, list[str]]:
    """The module's encoder as an ONNX graph (dynamic batch and length) and the input names it takes."""
    hf_model = torch_model(transformer)
    features = transformer.preprocess(["vitamin d and multiple sclerosis"])
    names = [name for name in INPUT_NAMES if name in features]
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
    return buffer.getvalue(), names


def _no_preprocess_advice(record: logging.LogRecord) -> bool:
    # The quantizer advises shape pre-processing on the root logger; BERT exports quantize fine without it.
    return "pre-processing before quantization" not in record.getMessage()


def quantize_int8(graph: bytes) -> bytes:
    """Dynamic int8 quantization: per-channel int8 weights, uint8 activations quantized per batch."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        source.write_bytes(graph)
        root = logging.getLogger()
        root.addFilter(_no_preprocess_advice)
        try:
            quantize_dynamic(source, target, weight_type=QuantType.QInt8, per_channel=True)
        finally:
            root.removeFilter(_no_preprocess_advice)
        return target.read_bytes()


def make_session(graph: bytes, threads: int | None = None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


def onnx_module(transformer: Any, precision: OnnxPrecision, threads: int | None = None) -> OnnxTransformer:
    """An ONNX Runtime stand-in for ``transformer``'s encoder, built once per (precision, threads) and kept."""
    threads = threads or torch.get_num_threads()
    with _lock:
        built: dict[tuple[str, int], OnnxTransformer] = transformer.__dict__.setdefault(_ATTRIBUTE, {})
        key = (precision, threads)
        if key not in built:
            graph, names = export_fp32(transformer)
            config = torch_model(transformer).config
            if precision == "int8":
                graph = quantize_int8(graph)
            built[key] = OnnxTransformer(make_session(graph, threads), names, config, precision)
        return built[key]


def install(transformer: Any, module: OnnxTransformer | None) -> None:
    """Route ``transformer``'s forward through ``module`` (None: back to PyTorch), keeping the torch model."""
    if "_denseflow_torch_model" not in transformer.__dict__:
        transformer.__dict__["_denseflow_torch_model"] = transformer.model
    transformer.model = module if module is not None else transformer.__dict__["_denseflow_torch_model"]


@contextlib.contextmanager
def running_on(transformer: Any, precision: OnnxPrecision, threads: int | None = None) -> Iterator[None]:
    """Within the block, ``transformer`` runs on ONNX Runtime at ``precision``; whatever ran before is restored."""
    module = onnx_module(transformer, precision, threads)
    with _lock:
        previous = transformer.model
        install(transformer, module)
    try:
        yield
    finally:
        with _lock:
            transformer.model = previous


def export_query_tower(model: Any, folder: Path, max_seq_length: int, tolerance: float = 1e-4) -> str | None:
    """Write ``model``'s query tower to ``folder`` for :class:`~denseflow.model.serving.query_tower.OnnxQueryTower`
    and check it embeds probe queries as sentence-transformers does; returns None when kept, else why not (the
    folder is then removed, and search loads the model with torch as before)."""
    import json
    import shutil

    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling

    from denseflow.model.encoder import encode, is_asymmetric
    from denseflow.model.serving.query_tower import CONFIG_FILE, MODEL_FILE, TOKENIZER_FILE, OnnxQueryTower

    modules = list(model[0].sub_modules["query"]) if is_asymmetric(model) else list(model)
    transformer, rest = modules[0], modules[1:]
    poolings = [module for module in rest if isinstance(module, Pooling)]
    if len(poolings) != 1 or any(not isinstance(module, Pooling | Normalize) for module in rest):
        return f"query tower modules {[type(m).__name__ for m in modules]} are not Transformer, Pooling, Normalize"
    pooling = poolings[0]
    mode = pooling.pooling_mode if hasattr(pooling, "pooling_mode") else pooling.get_pooling_mode_str()
    mode = mode if isinstance(mode, str) else "+".join(mode)  # a combination of modes is not exported
    if mode not in ("mean", "cls"):
        return f"pooling {mode!r} is not exported (mean and cls are)"
    tokenizer = getattr(transformer.tokenizer, "backend_tokenizer", None)
    if tokenizer is None:
        return "the query tower's tokenizer is not a fast (Rust) tokenizer"
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    graph, _ = export_fp32(transformer)
    (folder / MODEL_FILE).write_bytes(graph)
    tokenizer.save(str(folder / TOKENIZER_FILE))
    config = {
        "max_seq_length": int(max_seq_length),
        "pooling": mode,
        "normalize": True,
        "pad_id": int(transformer.tokenizer.pad_token_id or 0),
        "dimension": int(model.get_embedding_dimension()),
    }
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2), encoding="utf-8")
    from denseflow.model.serving.onnx_backend import PROBES

    exported = OnnxQueryTower(folder, threads=1).encode(PROBES)
    expected = encode(model, PROBES, "query")
    difference = float(np.abs(exported - expected).max())
    if difference > tolerance:
        shutil.rmtree(folder, ignore_errors=True)
        return f"the export differs from sentence-transformers by {difference:.2e} (> {tolerance:g})"
    return None
