"""Load on the HTTP search service: clients × seconds → requests, errors, latency percentiles, server RSS.

Starts ``denseflow serve`` on loopback against a published index, sends ``POST /search`` (SciFact test queries,
k = 10, the version's published mode) from ``--clients`` threads, each one request at a time, for ``--seconds``,
and prints requests, errors (non-200 answers and failed connections), requests per second, p50/p90/p99
latency and the server's resident memory before the load (after a warm-up) and after it.

The index is ``--workspace``'s published ``--name`` when it has one; otherwise one is built in a scratch
workspace: the bundled SciFact corpus (5,183 documents) encoded by the test suite's tiny random BERT
(2 layers, 32 dimensions; seconds to encode) with its BM25 index beside it, served hybrid like a retrain's.
Its latencies are the service's own overhead plus a small encoder's, not all-MiniLM-L6-v2's.

    nice -n 10 .venv/bin/python bench/serve_load.py --clients 4 --seconds 15
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
DENSEFLOW = Path(sys.executable).with_name("denseflow")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def build_tiny_index(workspace: Path, name: str) -> None:
    """SciFact's corpus encoded by the tests' tiny model, published with BM25 as ``workspace/indexes/name``."""
    sys.path.insert(0, str(REPO))
    from denseflow.model.data.beir import RejectLog, bundled_scifact_dir, load_beir
    from denseflow.model.encoder import encode, load_encoder
    from denseflow.model.index.bm25 import BM25Index
    from denseflow.model.index.build import IndexSpec, build_index
    from denseflow.model.index.store import build_manifest, publish
    from tests.conftest import build_tiny_model

    model_dir = build_tiny_model(workspace / "tiny-model")
    corpus = load_beir(bundled_scifact_dir(), ["test"], RejectLog()).corpus
    doc_ids = list(corpus)
    start = time.perf_counter()
    embeddings = encode(load_encoder(model_dir, 64), [corpus[d].full_text for d in doc_ids], "document", 64)
    spec = IndexSpec()
    index = build_index(embeddings, spec)
    bm25_dir = workspace / "bm25"
    BM25Index.from_texts(doc_ids, [corpus[d].full_text for d in doc_ids]).save(bm25_dir)
    manifest = build_manifest(
        spec, len(doc_ids), embeddings.shape[1], {"name": "tiny"}, "scifact", time.perf_counter() - start, 1.0, 0
    )
    publish(workspace / "indexes", name, index, doc_ids, model_dir, manifest, bm25_dir=bm25_dir)
    print(f"built: SciFact corpus ({len(doc_ids)} docs) with the tiny model in {time.perf_counter() - start:.0f} s")


def wait_healthy(url: str, server: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"server exited with status {server.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=5).json().get("status") == "ok":
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.5)
    raise SystemExit(f"server not healthy within {timeout:.0f} s")


def client_loop(
    url: str, queries: list[str], offset: int, stop: float, latencies: list[float], errors: list[str]
) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        n = offset
        while time.monotonic() < stop:
            query = queries[n % len(queries)]
            n += 1
            start = time.perf_counter()
            try:
                answer = client.post("/search", json={"query": query, "k": 10})
                ok = answer.status_code == 200
                reason = f"HTTP {answer.status_code}"
            except httpx.HTTPError as err:
                ok, reason = False, type(err).__name__
            elapsed = (time.perf_counter() - start) * 1000
            if ok:
                latencies.append(elapsed)
            else:
                errors.append(reason)


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--workspace", type=Path, help="workspace with a published index (default: build one)")
    parser.add_argument("--name", default="default", help="index name (default: %(default)s)")
    parser.add_argument("--threads", type=int, help="server's query-encoding threads (default: all cores)")
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    args = parser.parse_args()

    from denseflow.model.data.beir import RejectLog, bundled_scifact_dir, load_beir
    from denseflow.model.index.store import read_pointer

    scratch = tempfile.TemporaryDirectory(prefix="serve-load-")
    workspace = args.workspace
    if workspace is None or read_pointer(workspace / "indexes", args.name) is None:
        workspace = Path(scratch.name)
        build_tiny_index(workspace, args.name)
    queries = list(load_beir(bundled_scifact_dir(), ["test"], RejectLog()).split_queries("test").values())

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(DENSEFLOW), "serve", "--workspace", str(workspace), "--name", args.name, "--port", str(port)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_healthy(url, server, args.startup_timeout)
        health = httpx.get(f"{url}/health", timeout=10).json()
        for query in queries[:20]:  # warm-up: first-call allocations are not the steady state
            httpx.post(f"{url}/search", json={"query": query, "k": 10}, timeout=60).raise_for_status()
        rss_before = rss_mb(server.pid)
        latencies: list[float] = []
        errors: list[str] = []
        stop = time.monotonic() + args.seconds
        threads = [
            threading.Thread(target=client_loop, args=(url, queries, i * 37, stop, latencies, errors))
            for i in range(args.clients)
        ]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.monotonic() - started
        rss_after = rss_mb(server.pid)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        scratch.cleanup()

    total = len(latencies) + len(errors)
    p50, p90, p99 = np.percentile(latencies, [50, 90, 99]) if latencies else (float("nan"),) * 3
    print(f"date {time.strftime('%Y-%m-%d %H:%M')}  cpu {cpu_model()} ({os.cpu_count()} cores)  load {os.getloadavg()}")
    print(
        f"index {args.name}/{health.get('index_version')} ({health.get('documents')} docs) model {health.get('model')} mode {health.get('search_mode')}"
    )
    print(
        f"{args.clients} clients × {args.seconds:g} s: {total} requests, {len(errors)} errors, {total / wall:.1f} req/s"
    )
    if errors:
        print("errors by kind:", {kind: errors.count(kind) for kind in sorted(set(errors))})
    print(f"latency ms: p50 {p50:.1f}  p90 {p90:.1f}  p99 {p99:.1f}")
    print(f"server RSS MB: before {rss_before:.0f}  after {rss_after:.0f}")


if __name__ == "__main__":
    main()
