"""int8 through ONNX Runtime *static* QDQ quantization, calibrated on corpus text, against bf16 and dynamic int8.

The document encoder is exported once (``denseflow.model.onnx_runtime.export_fp32``, the export publication's
int8 path uses), then quantized by ``onnxruntime.quantization.quantize_static`` in QDQ format: per-channel int8
weights, uint8 activations (the u8s8 pair ONNX Runtime runs with VNNI), activation ranges calibrated on 256
SciFact documents, only the MatMuls whose second input is a weight (``MatMulConstBOnly``: the attention
products stay float). Two calibrations are tried (min/max, and the 99.99th percentile of a histogram). Each
is timed on 256 other SciFact documents beside torch fp32, torch bf16 and ONNX Runtime dynamic int8 (what
``encode.precision: int8`` runs), with publication's int8 quality check against fp32
(``encode.int8_min_mean_cosine`` and ``encode.int8_min_neighbour_recall``).

    .venv/bin/python bench/int8_onnx_static.py --max-seq-length 128
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

from denseflow.model import onnx_runtime
from denseflow.model.config import EncodeConfig
from denseflow.model.data.beir import RejectLog, bundled_scifact_dir, find_file, read_corpus
from denseflow.model.encoder import bundled_model_path, encode, load_encoder
from denseflow.model.index.build import embedding_agreement

sys.path.insert(0, str(Path(__file__).parent))
from encode_throughput import cpu_summary  # noqa: E402

CALIBRATIONS = {
    "min/max": {"calibrate_method": CalibrationMethod.MinMax, "extra_options": {"MatMulConstBOnly": True}},
    "percentile 99.99": {
        "calibrate_method": CalibrationMethod.Percentile,
        "extra_options": {"MatMulConstBOnly": True, "CalibPercentile": 99.99},
    },
}


class CorpusBatches(CalibrationDataReader):
    """Tokenised corpus batches, fed to the calibrator one at a time."""

    def __init__(self, transformer, texts: list[str], names: list[str], batch_size: int) -> None:  # noqa: ANN001
        features = (transformer.preprocess(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size))
        self.batches = iter([{name: batch[name].numpy() for name in names} for batch in features])

    def get_next(self) -> dict | None:
        return next(self.batches, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    print(f"date {time.strftime('%Y-%m-%d %H:%M:%S')}  cpu {cpu_summary()}")
    corpus = read_corpus(find_file(bundled_scifact_dir(), "corpus.jsonl"), RejectLog())
    ids = list(corpus)
    picked = np.random.default_rng(0).choice(len(ids), 512, replace=False)
    texts = [corpus[ids[i]].full_text for i in sorted(picked[:256])]
    calibration = [corpus[ids[i]].full_text for i in sorted(picked[256:])]
    model = load_encoder(bundled_model_path(), args.max_seq_length)
    transformer = model[0]
    checks = EncodeConfig()
    rates: dict[str, float] = {}

    def timed(label: str, precision: str) -> np.ndarray:
        encode(model, texts[:8], "document", args.batch_size, precision)  # warm-up
        best = float("inf")
        for _ in range(2):
            start = time.perf_counter()
            embeddings = encode(model, texts, "document", args.batch_size, precision)
            best = min(best, time.perf_counter() - start)
        rates[label] = len(texts) / best
        print(f"{label:<36}{rates[label]:8.1f} docs/s", flush=True)
        return embeddings

    def check(embeddings: np.ndarray) -> None:
        agreement = embedding_agreement(fp32, embeddings)
        passed = (
            agreement["mean_cosine"] >= checks.int8_min_mean_cosine
            and agreement["neighbour_recall@10"] >= checks.int8_min_neighbour_recall
        )
        print(
            f"  vs fp32: mean cos {agreement['mean_cosine']:.5f}, min {agreement['min_cosine']:.5f}, "
            f"neighbour R@10 {agreement['neighbour_recall@10']:.4f}: quality check {'passed' if passed else 'FAILED'}"
        )

    fp32 = timed("torch fp32", "fp32")
    timed("torch bf16 (eager)", "bf16")
    graph, names = onnx_runtime.export_fp32(transformer)
    config = onnx_runtime.torch_model(transformer).config
    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        source.write_bytes(graph)
        for calibration_name, settings in CALIBRATIONS.items():
            start = time.perf_counter()
            quantize_static(
                source,
                target,
                CorpusBatches(transformer, calibration, names, args.batch_size),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=["MatMul"],
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                **settings,
            )
            print(f"static QDQ, {calibration_name}: calibrated and quantized in {time.perf_counter() - start:.1f} s")
            session = onnx_runtime.make_session(target.read_bytes())
            onnx_runtime.install(transformer, onnx_runtime.OnnxTransformer(session, names, config, "int8"))
            check(timed(f"ORT static int8 ({calibration_name})", "fp32"))
            onnx_runtime.install(transformer, None)
    check(timed("ORT dynamic int8", "int8"))
    for label, rate in rates.items():
        print(f"{label:<36}{rate / rates['torch bf16 (eager)']:6.2f}× eager bf16")


if __name__ == "__main__":
    main()
