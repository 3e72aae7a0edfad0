"""One query at a time through the query tower alone: which runtime gets a short query's encode lowest.

``bench/query_latency.py`` times the whole search (validation, encode, FAISS, BM25, fusion, snippets) through the
served ``Searcher``; this script isolates the encode, the part that dominates it, and tries the runtimes a
query tower could use, each through :func:`denseflow.model.encoder.encode` with ``role="query"`` and batch 1:

- torch eager, fp32 and bf16 (autocast);
- ONNX Runtime fp32 on the plain export (what ``Searcher(backend="onnx")`` serves) and on the export fused by
  ONNX Runtime's BERT optimizer (SkipLayerNorm, BiasGelu);
- ``torch.compile`` with freezing (:func:`denseflow.model.compiled.frozen_compile`), fp32 and bf16.

Every path's vectors are compared with torch fp32 on 50 queries (max abs difference and min cosine), and each
runs with ``--threads`` intra-op threads: one count per process, because inductor fixes the thread count of
the kernels it generates when it compiles them (a graph compiled at 1 thread stays 1-thread). SciFact test
queries, 20 warm-up queries, then ``--queries`` timed.

    .venv/bin/python bench/query_tower.py --threads 1
    .venv/bin/python bench/query_tower.py --threads 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from denseflow.model import onnx_runtime
from denseflow.model.compiled import frozen_compile
from denseflow.model.data.beir import RejectLog, bundled_scifact_dir, load_beir
from denseflow.model.encoder import bundled_model_path, encode, load_encoder

sys.path.insert(0, str(Path(__file__).parent))
from encode_throughput import cpu_summary  # noqa: E402


def fused_graph(graph: bytes, hidden: int, heads: int) -> bytes:
    """The export after ONNX Runtime's offline BERT fusions."""
    from onnxruntime.transformers.optimizer import optimize_model

    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "plain.onnx", Path(tmp) / "fused.onnx"
        source.write_bytes(graph)
        optimized = optimize_model(str(source), model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=1)
        fused = {name: count for name, count in optimized.get_fused_operator_statistics().items() if count}
        print(f"ONNX Runtime BERT fusions: {fused}")
        optimized.save_model_to_file(str(target))
        return target.read_bytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--max-seq-length", type=int, default=256)
    args = parser.parse_args()
    print(f"date {time.strftime('%Y-%m-%d %H:%M:%S')}  cpu {cpu_summary()}")
    dataset = load_beir(bundled_scifact_dir(), ["test"], RejectLog())
    queries = list(dataset.split_queries("test").values())[: args.queries]
    model = load_encoder(bundled_model_path(), args.max_seq_length)
    transformer = model[0]
    eager = transformer.model
    tokens = [len(transformer.tokenizer(query)["input_ids"]) for query in queries]
    print(f"{len(queries)} SciFact test queries, tokens p50 {np.median(tokens):.0f}, max {max(tokens)}")
    reference = np.concatenate([encode(model, [query], "query") for query in queries[:50]])
    graph, names = onnx_runtime.export_fp32(transformer)
    graphs = {"plain": graph, "fused": fused_graph(graph, eager.config.hidden_size, eager.config.num_attention_heads)}

    def onnx(kind: str, threads: int) -> Callable[[], None]:
        def install() -> None:
            session = onnx_runtime.make_session(graphs[kind], threads)
            onnx_runtime.install(transformer, onnx_runtime.OnnxTransformer(session, names, eager.config, "fp32"))

        return install

    def compiled() -> None:
        transformer.model = frozen_compile(eager)

    print(f"\n{'path':<26}{'threads':>8}{'p50 ms':>9}{'p90 ms':>9}{'max |diff|':>12}{'min cos':>10}")
    threads = args.threads
    torch.set_num_threads(threads)
    paths: list[tuple[str, str, Callable[[], None] | None]] = [
        ("torch eager fp32", "fp32", None),
        ("torch eager bf16", "bf16", None),
        ("ONNX Runtime fp32", "fp32", onnx("plain", threads)),
        ("ONNX Runtime fp32 fused", "fp32", onnx("fused", threads)),
        ("torch.compile fp32", "fp32", compiled),
        ("torch.compile bf16", "bf16", compiled),
    ]
    for label, precision, install in paths:
        onnx_runtime.install(transformer, None)
        transformer.model = eager
        if install is not None:
            install()
        for query in queries[:20]:  # warm-up (and the compile's traces)
            encode(model, [query], "query", 1, precision)
        times = []
        for query in queries:
            start = time.perf_counter()
            encode(model, [query], "query", 1, precision)
            times.append((time.perf_counter() - start) * 1e3)
        vectors = np.concatenate([encode(model, [query], "query", 1, precision) for query in queries[:50]])
        p50, p90 = np.percentile(times, [50, 90])
        print(
            f"{label:<26}{threads:>8}{p50:>9.2f}{p90:>9.2f}{np.abs(vectors - reference).max():>12.2e}"
            f"{np.sum(vectors * reference, axis=1).min():>10.6f}",
            flush=True,
        )
    onnx_runtime.install(transformer, None)
    transformer.model = eager


if __name__ == "__main__":
    main()
