"""Corpus encoding throughput (docs/s): PyTorch fp32, ONNX Runtime fp32, bf16 (eager and torch.compile'd) and
ONNX Runtime int8, side by side.

Every path encodes the same sampled documents in the same process, alternating paths for ``--rounds``
rounds (best round kept), so a machine shared with other work slows them alike and the ratios hold.
Each path's embeddings are compared with PyTorch fp32's: mean and min cosine, and neighbour recall@10
(each document's 10 nearest among the sample, as found with the path's vectors versus fp32's).

The limit is measured, not looked up: torch matmuls of the shapes a BERT layer runs on a batch
(tokens × hidden by hidden × hidden / intermediate), in fp32 and in bf16, give GFLOPS; the FLOPs
one document costs come from the model's shape and the documents' real token counts (with the
padding that length-sorted batching leaves). limit docs/s = matmul GFLOPS / GFLOPs per doc.

SciFact documents are sampled (seeded), not all 5,183: a full pass takes minutes on 2 cores. bf16 runs
only where the CPU has it natively (AVX512-BF16/AMX): emulated it is about 50× slower and says nothing
(``--bf16 always`` forces it). int8 has no torch matmul to measure a limit with; its row is set against
the fp32 limit, so "of limit" above 100 % is what int8 buys over any fp32 path.

    nice -n 10 .venv/bin/python bench/encode_throughput.py --docs 256 --max-seq-length 128
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from denseflow.model import onnx_runtime
from denseflow.model.compiled import compile_document_encoder
from denseflow.model.data.beir import RejectLog, bundled_scifact_dir, find_file, read_corpus
from denseflow.model.encoder import autocast, bundled_model_path, encode, load_encoder, native_bf16
from denseflow.model.index.build import embedding_agreement


def cpu_summary() -> str:
    """``lscpu``'s model name and the SIMD flags that decide these figures (AVX2, AVX-512, VNNI, bf16, AMX)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ["avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8"]
    return f"{model} ({os.cpu_count()} cpus; {' '.join(flag for flag in wanted if flag in flags) or 'no AVX2'})"


def matmul_gflops(precision: str, kernel: str, tokens: int, hidden: int, intermediate: int, seconds: float) -> float:
    """Sustained GFLOPS over a BERT layer's projection shapes (QKV/O and both FFN matmuls).

    ``kernel``: ``matmul`` multiplies tensors already in ``precision``; ``linear`` runs ``F.linear``
    on fp32 tensors inside the encoder's own precision context (autocast for bf16), as the model does.
    """
    torch.manual_seed(0)
    shapes = [(tokens, hidden, hidden), (tokens, hidden, intermediate), (tokens, intermediate, hidden)]
    dtype = torch.bfloat16 if precision == "bf16" and kernel == "matmul" else torch.float32
    pairs = [(torch.randn(m, k, dtype=dtype), torch.randn(n, k, dtype=dtype)) for m, k, n in shapes]
    flops_per_round = sum(2 * m * k * n for m, k, n in shapes)

    def one_round() -> None:
        for a, w in pairs:
            if kernel == "matmul":
                a @ w.T
            else:
                torch.nn.functional.linear(a, w)

    with torch.inference_mode(), autocast(precision if kernel == "linear" else "fp32"):
        one_round()  # warm-up: first calls pick kernels and allocate
        rounds, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds or rounds < 2:
            one_round()
            rounds += 1
        elapsed = time.perf_counter() - start
    return flops_per_round * rounds / elapsed / 1e9


def transformer_config(model) -> tuple[int, int, int]:  # noqa: ANN001 - a SentenceTransformer
    config = next(m.config for m in model.modules() if hasattr(m, "config") and hasattr(m.config, "hidden_size"))
    return config.num_hidden_layers, config.hidden_size, config.intermediate_size


def flops_per_doc(lengths: np.ndarray, layers: int, hidden: int, intermediate: int) -> np.ndarray:
    """Forward FLOPs (2 per multiply-add) of each sequence length: projections, FFN and attention."""
    per_token = 8 * hidden * hidden + 4 * hidden * intermediate
    return layers * (lengths * per_token + 4 * lengths.astype(np.int64) ** 2 * hidden)


def padded_lengths(lengths: np.ndarray, batch_size: int) -> np.ndarray:
    """Lengths as executed: sentence-transformers sorts by length, each batch pads to its longest."""
    ordered = np.sort(lengths)[::-1]
    padded = ordered.copy()
    for start in range(0, len(ordered), batch_size):
        padded[start : start + batch_size] = ordered[start : start + batch_size].max()
    return padded


def timed_encode(model, texts: list[str], precision: str, batch_size: int) -> tuple[np.ndarray, float]:  # noqa: ANN001
    encode(model, texts[: min(8, len(texts))], "document", batch_size, precision)  # warm-up
    start = time.perf_counter()
    embeddings = encode(model, texts, "document", batch_size, precision)
    return embeddings, time.perf_counter() - start


def run_path(model, name: str, texts: list[str], batch_size: int) -> tuple[np.ndarray, float]:  # noqa: ANN001
    """One timed encode by path ``name``: ``torch-fp32``, ``onnx-fp32``, ``torch-bf16``, ``bf16-compiled``
    (``model`` is then the compiled copy) or ``onnx-int8``."""
    if name == "bf16-compiled":
        return timed_encode(model, texts, "bf16", batch_size)
    if name == "onnx-fp32":
        with onnx_runtime.running_on(model[0], "fp32"):
            return timed_encode(model, texts, "fp32", batch_size)
    return timed_encode(
        model, texts, {"torch-fp32": "fp32", "torch-bf16": "bf16", "onnx-int8": "int8"}[name], batch_size
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder (default: bundled all-MiniLM-L6-v2)")
    parser.add_argument("--docs", type=int, default=256, help="SciFact documents encoded by every path")
    parser.add_argument("--bf16", choices=["native", "always", "never"], default="native", help="when to run bf16")
    parser.add_argument("--rounds", type=int, default=2, help="alternating timed rounds per path; the best is kept")
    parser.add_argument("--max-seq-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    print(f"date {time.strftime('%Y-%m-%d %H:%M:%S')}  load {os.getloadavg()}  torch threads {torch.get_num_threads()}")
    print(f"cpu {cpu_summary()}  native bf16: {native_bf16()}  niceness {os.nice(0)}")
    model = load_encoder(args.model or bundled_model_path(), args.max_seq_length)
    layers, hidden, intermediate = transformer_config(model)

    corpus = read_corpus(find_file(bundled_scifact_dir(), "corpus.jsonl"), RejectLog())
    ids = list(corpus)
    rng = np.random.default_rng(args.seed)
    picked = [ids[i] for i in sorted(rng.choice(len(ids), min(args.docs, len(ids)), replace=False))]
    texts = [corpus[doc_id].full_text for doc_id in picked]
    tokenizer = model.tokenizer
    lengths = np.array(
        [min(len(tokenizer(text, truncation=False)["input_ids"]), args.max_seq_length) for text in texts]
    )
    useful = flops_per_doc(lengths, layers, hidden, intermediate)
    executed = flops_per_doc(padded_lengths(lengths, args.batch_size), layers, hidden, intermediate)
    print(
        f"sample: {len(texts)} SciFact docs, max_seq_length {args.max_seq_length}, mean tokens {lengths.mean():.0f} "
        f"({(lengths == args.max_seq_length).mean():.0%} truncated)"
    )
    print(
        f"FLOPs per doc: {useful.mean() / 1e9:.3f} GFLOP useful, {executed.mean() / 1e9:.3f} GFLOP executed "
        f"(padding to batch max, batch {args.batch_size}); layers {layers}, hidden {hidden}, ffn {intermediate}"
    )

    tokens = args.batch_size * int(lengths.mean())
    limits = {}
    for precision in ("fp32", "bf16"):
        measured = {
            kernel: matmul_gflops(precision, kernel, tokens, hidden, intermediate, 2.0 if precision == "fp32" else 3.0)
            for kernel in ("matmul", "linear")
        }
        limits[precision] = max(measured.values())
        print(
            f"matmul limit {precision}: {limits[precision]:.1f} GFLOPS (best of "
            + ", ".join(f"{kernel} {value:.1f}" for kernel, value in measured.items())
            + f"; shapes {tokens}×{hidden} by {hidden}×{hidden}, {hidden}×{intermediate}, {intermediate}×{hidden})"
        )
    paths = ["torch-fp32", "onnx-fp32", "onnx-int8"]
    models = dict.fromkeys(paths, model)
    if args.bf16 == "always" or (args.bf16 == "native" and native_bf16()):
        paths[2:2] = ["torch-bf16", "bf16-compiled"]
        models["torch-bf16"] = model
        models["bf16-compiled"] = load_encoder(args.model or bundled_model_path(), args.max_seq_length)
        started = time.perf_counter()
        reason = compile_document_encoder(models["bf16-compiled"])
        print(
            f"torch.compile (inductor, freezing, dynamic shapes): {reason or 'kept'}, {time.perf_counter() - started:.1f}s"
        )
    for name in paths:  # build ONNX sessions (export, quantization) and compiled kernels outside the timed rounds
        run_path(models[name], name, texts[:8], args.batch_size)
    best: dict[str, float] = {}
    embeddings: dict[str, np.ndarray] = {}
    for _ in range(args.rounds):
        for name in paths:
            embeddings[name], seconds = run_path(models[name], name, texts, args.batch_size)
            best[name] = min(seconds, best.get(name, float("inf")))
    reference = embeddings["torch-fp32"]
    base_rate = len(texts) / best["torch-fp32"]
    print(f"\n{len(texts)} docs per path, best of {args.rounds} alternating rounds, batch {args.batch_size}")
    print(
        f"{'path':<14}{'docs/s':>9}{'× torch fp32':>14}{'GFLOPS':>9}{'limit docs/s':>14}{'of limit':>10}"
        f"{'mean cos':>10}{'min cos':>9}{'nbr R@10':>10}"
    )
    flops = executed.mean()
    for name in paths:
        rate = len(texts) / best[name]
        limit_rate = limits["bf16" if "bf16" in name else "fp32"] * 1e9 / flops
        agreement = embedding_agreement(reference, embeddings[name])
        recall = next(v for k, v in agreement.items() if k.startswith("neighbour_recall"))
        print(
            f"{name:<14}{rate:>9.2f}{rate / base_rate:>13.2f}×{rate * flops / 1e9:>9.1f}{limit_rate:>14.2f}"
            f"{rate / limit_rate:>10.0%}{agreement['mean_cosine']:>10.5f}{agreement['min_cosine']:>9.5f}{recall:>10.4f}"
        )
    print(
        f"bf16/fp32 matmul speed ratio: {limits['bf16'] / limits['fp32']:.3f} "
        f"({'native' if native_bf16() else 'emulated: no AVX512-BF16/AMX; bf16 row skipped unless --bf16 always'})"
    )
    if "bf16-compiled" in embeddings:
        agreement = embedding_agreement(embeddings["torch-bf16"], embeddings["bf16-compiled"])
        print(
            f"bf16-compiled vs eager bf16: mean cosine {agreement['mean_cosine']:.6f}, min {agreement['min_cosine']:.6f}"
        )
    print("int8 is set against the fp32 matmul limit (no int8 torch matmul to measure)")
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
