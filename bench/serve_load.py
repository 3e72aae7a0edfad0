"""Load on the HTTP search service: clients × seconds → requests, errors, latency percentiles, server RSS.

Starts ``denseflow serve`` on loopback against a published index, sends ``POST /search`` (SciFact test queries,
k = 10, the version's published mode) from ``--clients`` threads, each one request at a time, for ``--seconds``,
and prints requests, errors (non-200 answers and failed connections), requests per second, p50/p90/p99
latency and the server's resident memory before the load (after a warm-up) and after it.

The index is ``--workspace``'s published ``--name`` when it has one; otherwise one is built in a scratch
workspace: the bundled SciFact corpus (5,183 documents) encoded by the test suite's tiny random BERT
(2 layers, 32 dimensions; seconds to encode) with its BM25 index beside it, served hybrid like a retrain's.
Its latencies are the service's own overhead plus a small encoder's, not all-MiniLM-L6-v2's.

    .venv/bin/python bench/serve_load.py --workspace .denseflow --clients 1,4,16,64 --batch-wait-ms 0,2

``--replicas URL1,URL2`` loads servers that already run (the local stack's search replicas, say) instead of starting
one: for each client count, first the first server alone, then the clients spread over all of them (client i asks
server i mod N), each row with the same columns (``servers`` in place of the batch wait; RSS of a server whose
port a local process listens on, else ``-``), then the ratio of N servers to one from the same run.
``--api-key-file`` sends the key (``Authorization: Bearer``) on every request, and passes it to a server started here.

    .venv/bin/python bench/serve_load.py --replicas http://127.0.0.1:8080,http://127.0.0.1:8081 \
        --api-key-file .denseflow/stack/search.key --clients 1,4,16
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
    url: str,
    queries: list[str],
    offset: int,
    stop: float,
    latencies: list[float],
    errors: list[str],
    headers: dict[str, str] | None = None,
) -> None:
    with httpx.Client(base_url=url, timeout=30, headers=headers or {}) as client:
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


def listening_pid(url: str) -> int | None:
    """The local process listening on ``url``'s port, when there is one this user may see."""
    port = httpx.URL(url).port
    try:
        for connection in psutil.net_connections(kind="tcp"):
            if connection.status == psutil.CONN_LISTEN and connection.laddr and connection.laddr.port == port:
                return connection.pid
    except (psutil.Error, OSError):
        pass
    return None


def load(
    urls: str | list[str], queries: list[str], clients: int, seconds: float, headers: dict[str, str] | None = None
) -> dict[str, float]:
    """``clients`` threads for ``seconds``; with several ``urls``, client i asks ``urls[i % len(urls)]``."""
    urls = [urls] if isinstance(urls, str) else urls
    latencies: list[float] = []
    errors: list[str] = []
    stop = time.monotonic() + seconds
    threads = [
        threading.Thread(
            target=client_loop, args=(urls[i % len(urls)], queries, i * 37, stop, latencies, errors, headers)
        )
        for i in range(clients)
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - started
    p50, p99 = np.percentile(latencies, [50, 99]) if latencies else (float("nan"),) * 2
    return {"requests": len(latencies) + len(errors), "errors": len(errors), "qps": len(latencies) / wall,
            "p50": float(p50), "p99": float(p99)}  # fmt: skip


def bearer(api_key_file: Path | None) -> dict[str, str]:
    if api_key_file is None:
        return {}
    return {"Authorization": f"Bearer {api_key_file.read_text(encoding='utf-8').strip()}"}


def rss_of(pids: list[int | None]) -> list[float | None]:
    found = []
    for pid in pids:
        try:
            found.append(rss_mb(pid) if pid else None)
        except psutil.Error:
            found.append(None)
    return found


def shown_rss(before: list[float | None], after: list[float | None]) -> str:
    shown = [f"{b:.0f} → {a:.0f}" for b, a in zip(before, after, strict=True) if b is not None and a is not None]
    return ", ".join(shown) or "-"


def load_replicas(urls: list[str], queries: list[str], args: argparse.Namespace, headers: dict[str, str]) -> None:
    """Servers that run already: per client count, the first alone, then all of them; then N against 1."""
    client_counts = [int(item) for item in args.clients.split(",")]
    pids = [listening_pid(url) for url in urls]
    healths = []
    for url in urls:
        health = httpx.get(f"{url}/health", timeout=10).json()
        healths.append(health)
        for query in queries[:20]:  # warm-up, as for one server
            httpx.post(f"{url}/search", json={"query": query, "k": 10}, headers=headers, timeout=60).raise_for_status()
    print("| servers | clients | requests | errors | req/s | p50 ms | p99 ms | RSS MB before → after |")
    print("|---|---|---|---|---|---|---|---|")
    figures: dict[tuple[int, int], dict[str, float]] = {}
    for clients in client_counts:
        for servers in dict.fromkeys([1, len(urls)]):
            before = rss_of(pids[:servers])
            found = load(urls[:servers], queries, clients, args.seconds, headers)
            after = rss_of(pids[:servers])
            figures[(servers, clients)] = found
            print(
                f"| {servers} | {clients} | {found['requests']} | {found['errors']} | {found['qps']:.1f} | "
                f"{found['p50']:.1f} | {found['p99']:.1f} | {shown_rss(before, after)} |",
                flush=True,
            )
    if len(urls) > 1:
        n = len(urls)
        print(f"\n| clients | req/s 1 server | req/s {n} servers | ratio | p50 ms 1 → {n} | p99 ms 1 → {n} |")
        print("|---|---|---|---|---|---|")
        for clients in client_counts:
            one, many = figures[(1, clients)], figures[(n, clients)]
            ratio = many["qps"] / one["qps"] if one["qps"] else float("nan")
            print(
                f"| {clients} | {one['qps']:.1f} | {many['qps']:.1f} | {ratio:.2f} | "
                f"{one['p50']:.1f} → {many['p50']:.1f} | {one['p99']:.1f} → {many['p99']:.1f} |"
            )
    for url, health in zip(urls, healths, strict=True):
        registry = health.get("registry") or {}
        print(
            f"{url}: index {health.get('index')}/{health.get('index_version')} ({health.get('documents')} docs) "
            f"model {health.get('model')} version {health.get('model_version')} mode {health.get('search_mode')} "
            f"query backend {health.get('query_backend')}"
            + (f" following {registry['reference']}" if registry.get("reference") else "")
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="1,4,16,64", help="client counts, comma-separated (default: %(default)s)")
    parser.add_argument(
        "--batch-wait-ms", default="0,2", help="micro-batching waits compared, comma-separated; 0 = off (%(default)s)"
    )
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--workspace", type=Path, help="workspace with a published index (default: build one)")
    parser.add_argument("--name", default="default", help="index name (default: %(default)s)")
    parser.add_argument("--threads", type=int, help="server's query-encoding threads (default: all cores)")
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    parser.add_argument(
        "--replicas",
        "--targets",
        help="running servers to load instead of starting one, comma-separated URLs: the first alone, then all",
    )
    parser.add_argument("--api-key-file", type=Path, help="the servers' API key, sent as 'Authorization: Bearer'")
    args = parser.parse_args()
    client_counts = [int(item) for item in args.clients.split(",")]
    waits = [float(item) for item in args.batch_wait_ms.split(",")]
    headers = bearer(args.api_key_file)

    from denseflow.model.data.beir import RejectLog, bundled_scifact_dir, load_beir
    from denseflow.model.index.store import read_pointer

    if args.replicas:
        urls = [item.strip().rstrip("/") for item in args.replicas.split(",") if item.strip()]
        queries = list(load_beir(bundled_scifact_dir(), ["test"], RejectLog()).split_queries("test").values())
        print(
            f"date {time.strftime('%Y-%m-%d %H:%M')}  cpu {cpu_model()} ({os.cpu_count()} cores)  "
            f"load {os.getloadavg()}  servers {', '.join(urls)}"
        )
        load_replicas(urls, queries, args, headers)
        return

    scratch = tempfile.TemporaryDirectory(prefix="serve-load-")
    workspace = args.workspace
    if workspace is None or read_pointer(workspace / "indexes", args.name) is None:
        workspace = Path(scratch.name)
        build_tiny_index(workspace, args.name)
    queries = list(load_beir(bundled_scifact_dir(), ["test"], RejectLog()).split_queries("test").values())
    print(f"date {time.strftime('%Y-%m-%d %H:%M')}  cpu {cpu_model()} ({os.cpu_count()} cores)  load {os.getloadavg()}")
    print("| batch wait ms | clients | requests | errors | req/s | p50 ms | p99 ms | RSS MB before → after |")
    print("|---|---|---|---|---|---|---|---|")
    try:
        for wait in waits:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            command = [str(DENSEFLOW), "serve", "--workspace", str(workspace), "--name", args.name, "--port", str(port),
                       "--batch-wait-ms", str(wait)]  # fmt: skip
            if args.threads:
                command += ["--threads", str(args.threads)]
            if args.api_key_file:
                command += ["--api-key-file", str(args.api_key_file)]
            env = os.environ | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
            server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_healthy(url, server, args.startup_timeout)
                health = httpx.get(f"{url}/health", timeout=10).json()
                for query in queries[:20]:  # warm-up: first-call allocations are not the steady state
                    answer = httpx.post(f"{url}/search", json={"query": query, "k": 10}, headers=headers, timeout=60)
                    answer.raise_for_status()
                for clients in client_counts:
                    before = rss_mb(server.pid)
                    figures = load(url, queries, clients, args.seconds, headers)
                    after = rss_mb(server.pid)
                    print(
                        f"| {wait:g} | {clients} | {figures['requests']} | {figures['errors']} | {figures['qps']:.1f} | "
                        f"{figures['p50']:.1f} | {figures['p99']:.1f} | {before:.0f} → {after:.0f} |",
                        flush=True,
                    )
            finally:
                server.send_signal(signal.SIGTERM)
                try:
                    server.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    server.kill()
        print(
            f"index {args.name}/{health.get('index_version')} ({health.get('documents')} docs) model "
            f"{health.get('model')} mode {health.get('search_mode')} query backend {health.get('query_backend')}"
        )
    finally:
        scratch.cleanup()


if __name__ == "__main__":
    main()
