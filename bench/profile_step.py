"""Where the time goes: one training step and one corpus-encoding batch under torch.profiler, by op family.

Each op's *self* CPU time is counted once (a ``linear`` calling ``addmm`` is not counted twice), then
grouped: matmul (aten::addmm/mm/bmm/matmul/linear and their backward matmuls), attention softmax, layer
norm, GELU, the optimiser step (AdamW's ops, marked with a record_function), the rest of the ops
(adds, copies, dropout, embedding, loss) and tokenisation (Python, timed around the tokenizer call).
The matmuls' achieved GFLOPS (FLOPs counted by the profiler) are set against this CPU's matmul limit,
measured here with bench/encode_throughput.py's own measurement on the same shapes.
``--precision bf16`` runs both under bf16 autocast, as training (``train.precision``) and encoding do, and
sets the matmuls against the bf16 limit (F.linear under autocast, the kernel the model calls).

    nice -n 10 .venv/bin/python bench/profile_step.py --batch-size 16 --max-seq-length 128
    nice -n 10 .venv/bin/python bench/profile_step.py --batch-size 16 --max-seq-length 128 --precision bf16
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
from torch.profiler import ProfilerActivity, profile, record_function

from denseflow.model.data.beir import RejectLog, bundled_scifact_dir, load_beir
from denseflow.model.encoder import autocast, bundled_model_path, load_encoder, role_transformers

sys.path.insert(0, str(Path(__file__).parent))
from encode_throughput import cpu_summary, matmul_gflops, transformer_config  # noqa: E402

MATMUL = {"aten::addmm", "aten::mm", "aten::bmm", "aten::matmul", "aten::linear", "aten::baddbmm"}
FAMILIES = {
    # Fused scaled-dot-product attention (its QK^T and PV products and softmax inside one op).
    "attention": ("scaled_dot_product", "flash_attention", "efficient_attention"),
    "softmax": ("softmax",),
    "layer norm": ("layer_norm",),
    "gelu": ("gelu",),
}


def family(name: str) -> str:
    if name in MATMUL:
        return "matmul"
    lowered = name.lower()
    for label, needles in FAMILIES.items():
        if any(needle in lowered for needle in needles):
            return label
    return "other ops"


def breakdown(prof: profile, tokenise_seconds: float, optimiser_marker: str | None) -> tuple[dict[str, float], float]:
    """Seconds per family and matmul GFLOP; optimiser ops (inside the marker) are split out of the others."""
    seconds: dict[str, float] = defaultdict(float)
    others: dict[str, float] = defaultdict(float)
    flops = 0.0
    optimiser_ids: set[int] = set()
    events = prof.events()
    if optimiser_marker:
        for marker in (e for e in events if e.name == optimiser_marker):
            optimiser_ids |= {id(child) for child in _descendants(marker)}
    for event in events:
        if (
            event.name.startswith("##")
            or event.name == optimiser_marker
            or event.device_type != torch.autograd.DeviceType.CPU
        ):
            continue
        label = "optimiser" if id(event) in optimiser_ids else family(event.name)
        seconds[label] += event.self_cpu_time_total / 1e6
        if label == "other ops":
            others[event.name] += event.self_cpu_time_total / 1e6
        if label == "matmul":
            flops += getattr(event, "flops", 0) or 0
    seconds["tokenisation"] += tokenise_seconds
    top = sorted(others.items(), key=lambda item: -item[1])[:6]
    print("  largest other ops: " + ", ".join(f"{name} {value:.2f} s" for name, value in top))
    return dict(seconds), flops / 1e9


def _descendants(event):  # noqa: ANN001, ANN202 - profiler FunctionEvent
    for child in event.cpu_children:
        yield child
        yield from _descendants(child)


def report(title: str, seconds: dict[str, float], gflop: float, limit: float) -> None:
    total = sum(seconds.values())
    matmul = seconds.get("matmul", 0.0)
    achieved = gflop / matmul if matmul else 0.0
    print(f"\n{title}: {total:.2f} s of op time + tokenisation")
    order = ["matmul", "attention", "softmax", "layer norm", "gelu", "other ops", "optimiser", "tokenisation"]
    for label in order:
        if label in seconds:
            print(f"  {label:<13}{seconds[label]:>8.3f} s {seconds[label] / total:>7.1%}")
    print(
        f"  matmul: {gflop:.1f} GFLOP at {achieved:.1f} GFLOPS = {achieved / limit:.0%} of the measured limit "
        f"{limit:.1f} GFLOPS; if every matmul ran at the limit and the rest stayed, the whole would be "
        f"{total / (total - matmul + gflop / limit):.2f}× faster"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=16, help="training examples (query, positive, negative)")
    parser.add_argument("--encode-batch", type=int, default=32, help="documents in the encoding batch")
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--steps", type=int, default=3, help="unprofiled training steps timed after the profile")
    parser.add_argument(
        "--compile", action="store_true", help="then time the training step with the encoder under torch.compile"
    )
    args = parser.parse_args()
    precision = args.precision

    print(f"date {time.strftime('%Y-%m-%d %H:%M:%S')}  load {os.getloadavg()}  niceness {os.nice(0)}")
    print(f"cpu {cpu_summary()}  torch threads {torch.get_num_threads()}")
    data = load_beir(bundled_scifact_dir(), ["train"], RejectLog())
    model = load_encoder(bundled_model_path(), args.max_seq_length)
    layers, hidden, intermediate = transformer_config(model)
    tokens = args.encode_batch * args.max_seq_length
    kernels = ("matmul", "linear") if precision == "fp32" else ("linear",)
    limit = max(matmul_gflops(precision, kernel, tokens, hidden, intermediate, 2.0) for kernel in kernels)
    print(f"{precision} matmul limit: {limit:.1f} GFLOPS (encode_throughput's measurement, {tokens}-token shapes)")

    # ---- one training step: MNRL over (query, positive, negative) with AdamW, as the trainer runs it
    doc_ids = list(data.corpus)
    queries = list(data.queries.values())[: args.batch_size]
    positives = [data.corpus[d].full_text for d in doc_ids[: args.batch_size]]
    negatives = [data.corpus[d].full_text for d in doc_ids[args.batch_size : 2 * args.batch_size]]
    loss_fn = MultipleNegativesRankingLoss(model)
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-5)
    model.train()

    def train_step() -> float:
        start = time.perf_counter()
        features = [model.preprocess(texts) for texts in (queries, positives, negatives)]
        tokenise = time.perf_counter() - start
        with autocast(precision):  # the forward and loss, as the trainer's bf16=True autocasts them
            loss = loss_fn(features, torch.empty(0))
        loss.backward()
        with record_function("optimiser"):
            optimiser.step()
            optimiser.zero_grad(set_to_none=True)
        return tokenise

    train_step()  # warm-up: allocations, AdamW state
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        tokenise = train_step()
    seconds, gflop = breakdown(prof, tokenise, "optimiser")
    report(
        f"training step (batch {args.batch_size} × 3 texts, {args.max_seq_length} tokens, {precision})",
        seconds,
        gflop,
        limit,
    )

    def timed_steps(label: str) -> None:
        """Wall time of whole steps without the profiler, and the matmul FLOPs over it as a share of the limit."""
        start = time.perf_counter()
        for _ in range(args.steps):
            train_step()
        step = (time.perf_counter() - start) / args.steps
        print(f"  {label}: {step:.2f} s per step; its matmuls over the whole step {gflop / step / limit:.0%} of limit")

    timed_steps("eager")
    if args.compile:
        for transformer in role_transformers(model, "document"):  # a siamese model: the one shared encoder
            transformer.model = torch.compile(transformer.model, dynamic=True)
        start = time.perf_counter()
        train_step()
        train_step()  # the first steps trace and compile forward and backward
        print(f"  compile: {time.perf_counter() - start:.1f} s for the first two steps")
        timed_steps("torch.compile")
        for transformer in role_transformers(model, "document"):
            transformer.model = transformer.model._orig_mod

    # ---- one corpus-encoding batch: tokenise + forward, no grad
    model.eval()
    texts = [data.corpus[d].full_text for d in doc_ids[: args.encode_batch]]

    def encode_batch() -> float:
        start = time.perf_counter()
        features = model.preprocess(texts)
        tokenise = time.perf_counter() - start
        with torch.inference_mode(), autocast(precision):
            model(features)
        return tokenise

    encode_batch()
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        tokenise = encode_batch()
    seconds, gflop = breakdown(prof, tokenise, None)
    report(
        f"encoding batch ({args.encode_batch} docs, {args.max_seq_length} tokens, {precision})", seconds, gflop, limit
    )
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
