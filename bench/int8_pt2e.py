r"""int8 through PyTorch 2 export quantization (PT2E, x86 inductor quantizer): speed and quality against bf16.

The document encoder (Hugging Face BERT inside sentence-transformers' ``Transformer``) is exported with
dynamic batch and length, annotated by torchao's ``X86InductorQuantizer`` (static per-tensor int8 activations
calibrated on 256 SciFact documents, per-channel int8 weights), converted and compiled by inductor with
freezing, so its linears run as oneDNN int8 kernels (AMX-INT8 / VNNI where the CPU has them). It is timed
against eager and compiled bf16 in the same process, on 256 other SciFact documents, with the quality check
publication applies to int8 (``encode.int8_min_mean_cosine`` / ``int8_min_neighbour_recall`` against fp32).

torchao is not a denseflow dependency (nothing in the pipeline uses it); this bench needs it installed:

    .venv/bin/pip install --no-deps torchao==0.18.0
    .venv/bin/python bench/int8_pt2e.py --max-seq-length 128
    .venv/bin/python bench/int8_pt2e.py --max-seq-length 128 --keep-float 'output\.dense$'   # mixed precision
    .venv/bin/python bench/int8_pt2e.py --max-seq-length 128 --dynamic   # activations quantized per batch
    .venv/bin/pip uninstall -y torchao   # transformers imports it when present

torchao 0.18's quantizer fails on this graph's linear+GELU fusion pattern (``IndexError`` in
``_get_output_nodes_of_partitions``); that fusion annotation is skipped, so the FFN's GELU runs after a
dequantize instead of fused into the int8 linear: every linear is still quantized.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import torch

from denseflow.model.compiled import compile_document_encoder
from denseflow.model.encoder import bundled_model_path, load_encoder

sys.path.insert(0, str(Path(__file__).parent))
from encode_throughput import cpu_summary  # noqa: E402
from int8_common import EncodeTimer, print_int8_check, scifact_sample  # noqa: E402


class _ExportedEncoder(torch.nn.Module):
    """Positional inputs and the last hidden state only: the form ``torch.export`` takes."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor):  # noqa: ANN201
        return self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, return_dict=True
        ).last_hidden_state


class _AsTransformerOutput(torch.nn.Module):
    """What sentence-transformers' ``Transformer`` reads from its model: a dict with ``last_hidden_state``."""

    def __init__(self, compiled: torch.nn.Module, config: object, bf16_rest: bool) -> None:
        super().__init__()
        self.compiled, self.config, self.bf16_rest = compiled, config, bf16_rest

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids=None, **_: object):  # noqa: ANN001, ANN201
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16_rest):
            return {"last_hidden_state": self.compiled(input_ids, attention_mask, token_type_ids).float()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--dynamic", action="store_true", help="activations quantized per batch at run time, not calibrated"
    )
    parser.add_argument(
        "--keep-float",
        default=None,
        help="regex of module names left unquantized, e.g. 'output\\.dense$' (the FFN down-projections)",
    )
    args = parser.parse_args()
    try:
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as x86
        from torchao.quantization.pt2e import allow_exported_model_train_eval
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError:
        sys.exit("torchao is not installed: see this script's docstring")

    print(f"date {time.strftime('%Y-%m-%d %H:%M:%S')}  cpu {cpu_summary()}  torch threads {torch.get_num_threads()}")
    texts, calibration = scifact_sample()
    model = load_encoder(bundled_model_path(), args.max_seq_length)
    timed = EncodeTimer(model, texts, args.batch_size, width=28)
    fp32 = timed("torch fp32", "fp32")
    timed("torch bf16 (eager)", "bf16")
    encoder = model[0].model

    # ---- PT2E: export, annotate, calibrate on corpus text, convert
    start = time.perf_counter()
    features = model.preprocess(calibration[:64])
    example = (features["input_ids"], features["attention_mask"], features["token_type_ids"])
    batch = torch.export.Dim("batch", min=1, max=1024)
    length = torch.export.Dim("length", min=2, max=args.max_seq_length)
    with torch.no_grad():
        exported = torch.export.export(
            _ExportedEncoder(encoder).eval(), example, dynamic_shapes=({0: batch, 1: length},) * 3
        ).module()
    x86.X86InductorQuantizer._annotate_linear_unary = lambda self, *a, **k: None  # see the docstring
    quantizer = x86.X86InductorQuantizer()
    quantizer.set_global(x86.get_default_x86_inductor_quantization_config(is_dynamic=args.dynamic))
    kept_float = [
        name
        for name, module in encoder.named_modules()
        if isinstance(module, torch.nn.Linear) and args.keep_float and re.search(args.keep_float, name)
    ]
    for name in kept_float:  # the exported graph names modules from the wrapper down: encoder.<name>
        quantizer.set_module_name_qconfig(f"encoder.{name}", None)
    linears = sum(isinstance(module, torch.nn.Linear) for module in encoder.modules())
    print(
        f"activations {'dynamic' if args.dynamic else 'static (calibrated)'}; "
        f"{linears - len(kept_float)} of {linears} linears int8 ({len(kept_float)} kept float)"
    )
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for i in range(0, len(calibration), args.batch_size):
            features = model.preprocess(calibration[i : i + args.batch_size])
            prepared(features["input_ids"], features["attention_mask"], features["token_type_ids"])
    converted = convert_pt2e(prepared)
    allow_exported_model_train_eval(converted)
    print(f"export + calibrate + convert: {time.perf_counter() - start:.1f} s")
    with torch._inductor.config.patch(freezing=True):
        compiled = torch.compile(converted, dynamic=True)
        for bf16_rest in (False, True):
            label = "PT2E int8, rest " + ("bf16" if bf16_rest else "fp32")
            model[0].model = _AsTransformerOutput(compiled, encoder.config, bf16_rest)
            print_int8_check(fp32, timed(label, "fp32"))
    model[0].model = encoder
    reason = compile_document_encoder(model)
    timed("torch bf16 (compiled)" if reason is None else "torch bf16 (eager again)", "bf16")
    timed.print_ratios("torch bf16 (eager)")


if __name__ == "__main__":
    main()
