"""``denseflow publish | index list | index rollback | search | serve``: sub-commands of the published index."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path

from denseflow.cli import overrides
from denseflow.model.workspace import tracking_uri, workspace_dir

# Same as denseflow.model.serving.service's defaults; repeated so parsing does not import torch and FastAPI.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
# Same as denseflow.model.index.store.SEARCH_MODES, for the same reason.
MODES = ["dense", "bm25", "hybrid"]
# Same as denseflow.model.serving.replica's defaults, for the same reason.
DEFAULT_POLL_SECONDS = 30.0
DEFAULT_KEEP_VERSIONS = 2


def _user_errors(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Bad input and unusable indexes end with one line on stderr and exit status 2, not a traceback."""

    @functools.wraps(handler)
    def wrapped(args: argparse.Namespace) -> int:
        from denseflow.model.index.store import PublishedIndexError
        from denseflow.model.serving.search import QueryError

        try:
            return handler(args)
        except (QueryError, PublishedIndexError, ValueError) as err:
            print(f"denseflow {args.command}: error: {err}", file=sys.stderr)
            return 2

    return wrapped


def _index_root(args: argparse.Namespace) -> Path:
    return workspace_dir(args.workspace) / "indexes"


def _publish_config(args: argparse.Namespace):  # noqa: ANN202 - denseflow.model.config.PublishConfig
    from denseflow.model.config import PublishConfig

    flags = {
        "model": args.model,
        "workspace": str(args.workspace) if args.workspace else None,
        "data.path": str(args.data) if args.data else None,
        "index.name": args.name,
        "index.type": args.index_type,
        "encode.shard_size": args.shard_size,
        "encode.max_seq_length": args.max_seq_length,
        "encode.precision": args.precision,
        "runner.kind": args.runner,
        "runner.dask_address": args.dask_address,
    }
    return PublishConfig.model_validate(overrides.build(args.config, flags, args.overrides))


def cmd_publish(args: argparse.Namespace) -> int:
    from denseflow.flows.publish_index import run_publish

    result = run_publish(_publish_config(args))
    print(json.dumps(result.summary(), indent=2, default=str))
    return 0


@_user_errors
def cmd_index_list(args: argparse.Namespace) -> int:
    from denseflow.model.index.store import list_versions

    versions = [version.summary() for version in list_versions(_index_root(args), args.name)]
    if args.json:
        print(json.dumps(versions, indent=2))
        return 0
    if not versions:
        print(f"no versions of index {args.name!r} under {_index_root(args)}")
        return 0
    header = ["", "version", "created_at", "model", "type", "count", "recall@10"]
    rows = [
        ["*" if v["current"] else "", v["version"], str(v["created_at"])[:19], str(v["model"]), str(v["index_type"]),
         str(v["count"]), "" if v["recall_at_10"] is None else f"{v['recall_at_10']:.4f}"]
        if not v["broken"] else ["*" if v["current"] else "", v["version"], "BROKEN", v["broken"], "", "", ""]
        for v in versions
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


@_user_errors
def cmd_index_rollback(args: argparse.Namespace) -> int:
    from denseflow.model.index.store import read_pointer, rollback

    before = read_pointer(_index_root(args), args.name)
    info = rollback(_index_root(args), args.name, args.to)
    print(f"index {args.name}: current {before} -> {info.version} ({info.summary()['model']})")
    return 0


def _replica(args: argparse.Namespace, searcher_options: dict):  # noqa: ANN202 - denseflow.model.serving.replica.Replica
    """A replica of ``--model`` (``retriever@production``) with its cache under ``--cache-dir``."""
    import mlflow

    from denseflow.model.serving.replica import Replica, ReplicaCache
    from denseflow.registry.replica_source import MlflowVersionSource

    workspace = workspace_dir(args.workspace)
    uri = tracking_uri(None, workspace)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    source = MlflowVersionSource(args.model, args.name)
    # One replica per cache folder (a lock): a one-off search keeps its own, so it runs beside a serving replica.
    default_cache = workspace / ("replica-cache" if args.handler is cmd_serve else "search-cache")
    cache = ReplicaCache(args.cache_dir or default_cache, source.model)
    return Replica(
        source, cache, keep=getattr(args, "keep_versions", DEFAULT_KEEP_VERSIONS), searcher_options=searcher_options
    )


@_user_errors
def cmd_search(args: argparse.Namespace) -> int:
    from denseflow.model.serving.search import Searcher

    options = {"threads": args.threads, "backend": args.backend, "mode": args.mode}
    fields = ("title", "snippet", "text") if args.text else ("title", "snippet")
    if args.model:
        with _replica(args, options) as replica:
            searcher = replica.start()
            if replica.watch.error:  # the registry is away, or its target cannot be served: say what answers
                served = replica.watch.served.label if replica.watch.served else "version"
                print(f"denseflow search: {replica.watch.error}; answering from the cached {served}", file=sys.stderr)
            result = searcher.search(args.query, args.k, fields=fields)
    else:
        result = Searcher(_index_root(args), args.name, **options).search(args.query, args.k, fields=fields)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
        return 0
    from denseflow.cli.render import print_search_result

    print_search_result(result, args.name)
    return 0


def _log_to_stderr() -> None:
    """denseflow's own INFO lines (versions loaded, downloaded, swapped, dropped) beside uvicorn's access log; other
    libraries stay at their defaults (httpx would log every poll)."""
    import logging

    logger = logging.getLogger("denseflow")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


@_user_errors
def cmd_serve(args: argparse.Namespace) -> int:
    from denseflow.model.serving.search import Searcher
    from denseflow.model.serving.service import check_bind, read_api_key, serve

    # Both before anything is loaded or downloaded: a refused bind should not cost a model load first.
    api_key = read_api_key(args.api_key_file) if args.api_key_file else None
    check_bind(args.host, api_key)
    _log_to_stderr()
    options = {
        "threads": args.threads,
        "backend": args.backend,
        "mode": args.mode,
        "batch_wait_ms": args.batch_wait_ms,
        "max_batch": args.max_batch,
    }
    if not args.model:
        serve(Searcher(_index_root(args), args.name, **options), host=args.host, port=args.port, api_key=api_key)
        return 0
    if args.poll_seconds <= 0:
        raise ValueError(f"--poll-seconds must be positive, got {args.poll_seconds}")
    replica = _replica(args, options)
    try:
        searcher = replica.start()
        serve(searcher, args.host, args.port, api_key=api_key, replica=replica, poll_seconds=args.poll_seconds)
    finally:
        replica.close()
    return 0


def add_index_commands(commands: argparse._SubParsersAction) -> None:
    """Register the sub-commands on ``denseflow``'s sub-parser (no heavy imports: parsing stays instant)."""

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--workspace", type=Path, help="workspace folder (default: $DENSEFLOW_HOME or ./.denseflow)"
        )
        parser.add_argument("--name", default="default", help="index name (default: %(default)s)")

    publish = commands.add_parser("publish", help="re-encode the corpus with a registered model and publish its index")
    publish.add_argument("--model", help="retriever@production (default), retriever/3, or a model folder")
    publish.add_argument("--config", type=Path, help="YAML PublishConfig; flags below override it")
    publish.add_argument("--data", type=Path, help="BEIR folder whose corpus is indexed (default: bundled SciFact)")
    publish.add_argument("--index-type", choices=["flat", "hnsw", "ivf"])
    publish.add_argument("--shard-size", type=int, help="documents per encoding task")
    publish.add_argument("--max-seq-length", type=int)
    publish.add_argument("--precision", choices=["auto", "bf16", "fp32"])
    publish.add_argument("--runner", choices=["local", "dask"], help="task runner for the shard mapping")
    publish.add_argument("--dask-address", help="scheduler of an existing Dask cluster")
    overrides.add_set_argument(publish)
    common(publish)
    publish.set_defaults(handler=cmd_publish, name=None)

    index = commands.add_parser("index", help="published index versions")
    actions = index.add_subparsers(dest="index_command", required=True)
    listing = actions.add_parser("list", help="versions, newest last; * marks current")
    listing.add_argument("--json", action="store_true")
    common(listing)
    listing.set_defaults(handler=cmd_index_list)
    back = actions.add_parser("rollback", help="point current at the previous version (or --to VERSION)")
    back.add_argument("--to", help="version to serve, e.g. v0003 (default: the one before current)")
    common(back)
    back.set_defaults(handler=cmd_index_rollback)

    search = commands.add_parser("search", help="search the published index with one query")
    search.add_argument("query")
    search.add_argument("-k", type=int, default=10)
    search.add_argument("--json", action="store_true", help="the result as JSON (id, score, title, snippet)")
    search.add_argument("--text", action="store_true", help="also each hit's whole text")
    search.add_argument("--threads", type=int, help="threads for query encoding (default: all cores)")
    search.add_argument("--backend", choices=["auto", "torch", "onnx"], default="auto", help="query tower runtime")
    search.add_argument("--mode", choices=MODES, help="dense, bm25 or hybrid (default: what was published)")
    search.add_argument(
        "--model",
        help="search what a registry reference serves (retriever@production, retriever/3): its published index is "
        "downloaded from the tracking server into --cache-dir and verified, instead of the workspace's indexes/",
    )
    search.add_argument("--cache-dir", type=Path, help="cache for --model (default: <workspace>/search-cache)")
    common(search)
    search.set_defaults(handler=cmd_search)

    serve = commands.add_parser("serve", help="HTTP search service (/search, /health, /metrics) on loopback by default")
    serve.add_argument("--host", default=DEFAULT_HOST, help="bind address (default: %(default)s)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT)
    serve.add_argument("--threads", type=int, help="threads for query encoding (default: all cores)")
    serve.add_argument("--backend", choices=["auto", "torch", "onnx"], default="auto", help="query tower runtime")
    serve.add_argument(
        "--batch-wait-ms",
        type=float,
        default=0.0,
        help="micro-batching: a query waits up to this long for concurrent ones, embedded together (default 0 = off: "
        "with the torch-free query tower it measured slower here, docs/benchmarks.md)",
    )
    serve.add_argument("--max-batch", type=int, default=32, help="micro-batching: queries embedded in one call")
    serve.add_argument(
        "--mode", choices=MODES, help="default mode of /search (default: what each version was published with)"
    )
    serve.add_argument(
        "--api-key-file",
        type=Path,
        help="file holding the API key clients must send (Authorization: Bearer <key> or X-API-Key) on every path "
        "but /health; required to bind beyond loopback",
    )
    serve.add_argument(
        "--model",
        help="a replica: serve what this registry reference names (retriever@production), downloaded from the "
        "tracking server into --cache-dir and verified, and follow it when it moves (no shared folder needed)",
    )
    serve.add_argument("--cache-dir", type=Path, help="replica cache for --model (default: <workspace>/replica-cache)")
    serve.add_argument(
        "--poll-seconds",
        type=float,
        default=DEFAULT_POLL_SECONDS,
        help="--model: how often the reference is looked up (default: %(default)s)",
    )
    serve.add_argument(
        "--keep-versions",
        type=int,
        default=DEFAULT_KEEP_VERSIONS,
        help="--model: versions kept in the cache, the one served included (default: %(default)s)",
    )
    common(serve)
    serve.set_defaults(handler=cmd_serve)
