"""The query tower without torch: ONNX Runtime and a Hugging Face ``tokenizers`` tokenizer, nothing else.

Publication exports the version's query tower once (:func:`denseflow.model.onnx_runtime.export_query_tower`) into
``query_tower/`` of the published version, under the manifest's checksums: the transformer as ONNX, its fast
tokenizer, and what sentence-transformers does around it (sequence length, pooling, normalisation). Search and
serve then embed a query here without importing torch or sentence-transformers, which is most of a one-off
``denseflow search``'s start-up time and memory. The export is kept only when it embeds probe queries as
sentence-transformers does (within 1e-4), so results are unchanged.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

FOLDER = "query_tower"
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "query_tower.json"
POOLINGS = ("mean", "cls")


class OnnxQueryTower:
    """Embeds queries (L2-normalised float32) with an exported query tower."""

    def __init__(self, folder: Path, threads: int | None = None) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        folder = Path(folder)
        self.config: dict[str, Any] = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        if self.config.get("pooling") not in POOLINGS:
            raise ValueError(f"{folder / CONFIG_FILE}: pooling {self.config.get('pooling')!r} is not one of {POOLINGS}")
        self.tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
        self.tokenizer.enable_truncation(int(self.config["max_seq_length"]))
        self.tokenizer.enable_padding(pad_id=int(self.config.get("pad_id", 0)))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(folder / MODEL_FILE), options, providers=["CPUExecutionProvider"])
        self.inputs = [item.name for item in self.session.get_inputs()]
        self.dimension = int(self.config["dimension"])

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        encodings = self.tokenizer.encode_batch(list(texts))
        ids = np.array([item.ids for item in encodings], dtype=np.int64)
        mask = np.array([item.attention_mask for item in encodings], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        (hidden,) = self.session.run(["last_hidden_state"], {name: feed[name] for name in self.inputs})
        if self.config["pooling"] == "cls":
            pooled = hidden[:, 0]
        else:
            weights = mask[..., None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        if self.config.get("normalize", True):
            pooled = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return np.ascontiguousarray(pooled, dtype=np.float32)


def single_query_p50_ms(tower: OnnxQueryTower, queries: list[str], warmup: int = 10) -> float:
    """Median milliseconds of one query encoded alone: what a search at one client waits for."""
    import time

    for query in queries[:warmup]:
        tower.encode([query])
    timings = []
    for query in queries:
        started = time.perf_counter()
        tower.encode([query])
        timings.append((time.perf_counter() - started) * 1000)
    return float(np.median(timings)) if timings else 0.0
