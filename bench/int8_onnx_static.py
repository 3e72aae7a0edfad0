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

from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

from denseflow.model import onnx_runtime
from denseflow.model.encoder import bundled_model_path, load_encoder

sys.path.insert(0, str(Path(__file__).parent))
from encode_throughput import cpu_summary  # noqa: E402
from int8_common import EncodeTimer, print_int8_check, scifact_sample  # noqa: E402

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
    texts, calibration = scifact_sample()
    model = load_encoder(bundled_model_path(), args.max_seq_length)
    transformer = model[0]
    timed = EncodeTimer(model, texts, args.batch_size)

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
            print_int8_check(fp32, timed(f"ORT static int8 ({calibration_name})", "fp32"))
            onnx_runtime.install(transformer, None)
    print_int8_check(fp32, timed("ORT dynamic int8", "int8"))
    timed.print_ratios("torch bf16 (eager)")


if __name__ == "__main__":
    main()
