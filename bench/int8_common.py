"""What the int8 benches share: the SciFact sample, the timed encode, and publication's own int8 quality check.

``bench/int8_pt2e.py`` and ``bench/int8_onnx_static.py`` time each path on the same 256 SciFact documents
(best of two rounds) and calibrate on 256 others, so their figures can be set side by side.
"""

from __future__ import annotations

import time

import numpy as np
from sentence_transformers import SentenceTransformer

from denseflow.model.config import EncodeConfig
from denseflow.model.data.beir import RejectLog, bundled_scifact_dir, find_file, read_corpus
from denseflow.model.encoder import Precision, encode
from denseflow.model.index.build import embedding_agreement
from denseflow.model.index.publication import precision_verdict


def scifact_sample(seed: int = 0) -> tuple[list[str], list[str]]:
    """256 SciFact documents to time on and 256 others to calibrate on."""
    corpus = read_corpus(find_file(bundled_scifact_dir(), "corpus.jsonl"), RejectLog())
    ids = list(corpus)
    picked = np.random.default_rng(seed).choice(len(ids), 512, replace=False)
    return [corpus[ids[i]].full_text for i in sorted(picked[:256])], [
        corpus[ids[i]].full_text for i in sorted(picked[256:])
    ]


class EncodeTimer:
    """Times encodes of ``texts`` by whatever the model runs now; every rate is kept under its label."""

    def __init__(self, model: SentenceTransformer, texts: list[str], batch_size: int, width: int = 36) -> None:
        self.model, self.texts, self.batch_size, self.width = model, texts, batch_size, width
        self.rates: dict[str, float] = {}

    def __call__(self, label: str, precision: Precision) -> np.ndarray:
        encode(self.model, self.texts[:8], "document", self.batch_size, precision)  # warm-up (a compile's first call)
        best = float("inf")
        for _ in range(2):
            start = time.perf_counter()
            embeddings = encode(self.model, self.texts, "document", self.batch_size, precision)
            best = min(best, time.perf_counter() - start)
        self.rates[label] = len(self.texts) / best
        print(f"{label:<{self.width}}{self.rates[label]:8.1f} docs/s", flush=True)
        return embeddings

    def print_ratios(self, reference: str) -> None:
        for label, rate in self.rates.items():
            print(f"{label:<{self.width}}{rate / self.rates[reference]:6.2f}× {reference}")


def print_int8_check(fp32: np.ndarray, embeddings: np.ndarray) -> None:
    """The agreement with fp32 and the verdict publication would give int8 (``encode.int8_*`` defaults)."""
    agreement = embedding_agreement(fp32, embeddings)
    checks = EncodeConfig()
    failure = precision_verdict(
        agreement, "int8", checks.bf16_min_cosine, checks.int8_min_mean_cosine, checks.int8_min_neighbour_recall
    )
    print(
        f"  vs fp32: mean cos {agreement['mean_cosine']:.5f}, min {agreement['min_cosine']:.5f}, "
        f"neighbour R@10 {agreement['neighbour_recall@10']:.4f}: quality check "
        + ("passed" if failure is None else f"FAILED ({failure})")
    )
