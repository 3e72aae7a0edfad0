"""``denseflow models list | promote | rollback | ui``: the registry and its dashboard from the command line."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from denseflow.model.workspace import workspace_dir

DEFAULT_UI_HOST = "127.0.0.1"
DEFAULT_UI_PORT = 5000


def _tracking(args: argparse.Namespace):  # noqa: ANN202 - denseflow.model.config.TrackingConfig
    from denseflow.model.config import RetrainConfig, TrackingConfig

    if args.config:
        return RetrainConfig.from_yaml(args.config).tracking
    return TrackingConfig()


def _connect(args: argparse.Namespace) -> str:
    """Point MLflow at the same store ``retrain`` uses; returns the registered model's name."""
    import mlflow

    from denseflow.tasks.tracking import tracking_uri

    tracking = _tracking(args)
    uri = tracking_uri(tracking, workspace_dir(args.workspace))
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return args.name or tracking.registered_model


def _publish(args: argparse.Namespace, name: str, version: str) -> dict:
    """Publish ``version``'s index over the corpus it was trained on (its run's ingested dataset in the workspace);
    when that is not available, over ``--config``'s data (else the bundled SciFact), saying so on stderr."""
    from denseflow.flows.publish_index import run_publish
    from denseflow.model.config import DataConfig, PublishConfig, RetrainConfig
    from denseflow.registry.resolve import trained_dataset_dir

    workspace = workspace_dir(args.workspace)
    corpus, why = trained_dataset_dir(name, version, workspace)
    if corpus is None:
        corpus = RetrainConfig.from_yaml(args.config).data.path if args.config else None
        print(
            f"denseflow {args.command}: {why}; indexing {corpus or 'the bundled SciFact corpus'} instead",
            file=sys.stderr,
        )
    data = DataConfig(path=corpus)
    config = PublishConfig(workspace=workspace, model=f"{name}/{version}", data=data, tracking=_tracking(args))
    result = run_publish(config)
    published = {key: result.summary()[key] for key in ("name", "version", "path", "documents", "documents_encoded")}
    return published | {"corpus": str(corpus) if corpus else "bundled SciFact"}


def format_versions(rows: list[dict]) -> str:
    columns = ("version", "aliases", "ndcg@10", "mrr@10", "recall@10", "recall@100", "dataset", "gate", "created")
    table = [columns]
    for row in rows:
        figures = tuple(f"{row['metrics'][m]:.4f}" if m in row["metrics"] else "-" for m in columns[2:6])
        aliases = ",".join(row["aliases"]) or "-"
        table.append(
            (
                row["version"],
                aliases,
                *figures,
                row["dataset_fingerprint"] or "-",
                row["decision"] or "-",
                row["created"],
            )
        )
    widths = [max(len(str(line[i])) for line in table) for i in range(len(columns))]
    return "\n".join(
        "  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)) for line in table
    )


def cmd_models_list(args: argparse.Namespace) -> int:
    from denseflow.registry.aliases import list_versions

    name = _connect(args)
    rows = list_versions(name)
    print(json.dumps(rows, indent=2) if args.json else format_versions(rows))
    return 0


def cmd_models_show(args: argparse.Namespace) -> int:
    """A version's model card (its registry description), aliases and tags."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    name = _connect(args)
    client = MlflowClient()
    try:
        version = client.get_model_version(name, args.version)
    except MlflowException as err:
        print(f"denseflow models show: {name} version {args.version}: {err.message}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"version": version.version, "aliases": list(version.aliases), "tags": version.tags,
                          "served_system": served_system_of(version.tags).as_dict(),
                          "card": version.description}, indent=2))  # fmt: skip
        return 0
    print(version.description or f"{name} version {version.version} has no model card (registered before cards).")
    print(f"\naliases: {', '.join(version.aliases) or 'none'}; run {version.run_id}")
    print("\nserved system (what search serves for this version):")
    print(json.dumps(served_system_of(version.tags).as_dict(), indent=2))
    return 0


def _index_serving(workspace: Path, name: str, version: str) -> str | None:
    """The newest kept index version (``index.keep_versions``) built for registry version ``version``."""
    from denseflow.model.config import IndexConfig
    from denseflow.model.index.store import list_versions

    for info in reversed(list_versions(workspace / "indexes", IndexConfig().name)):
        if info.manifest is not None and info.manifest.model.label == f"{name}@{version}":
            return info.version
    return None


def _serve(args: argparse.Namespace, name: str, version: str) -> dict:
    """Make the published index serve ``version``: its kept index version when one is there (a pointer move,
    seconds), else a publication (incremental: only documents the embedding cache lacks are encoded)."""
    from denseflow.model.config import IndexConfig
    from denseflow.model.index.store import rollback as index_rollback

    workspace = workspace_dir(args.workspace)
    kept = _index_serving(workspace, name, version)
    if kept is not None:
        moved = index_rollback(workspace / "indexes", IndexConfig().name, to=kept)
        return {"name": IndexConfig().name, "version": moved.version, "path": str(moved.path), "reused": True}
    return _publish(args, name, version) | {"reused": False}


def _plan(args: argparse.Namespace, name: str, current: str | None, target: str) -> dict:
    from denseflow.model.config import IndexConfig
    from denseflow.model.index.store import published_model_label

    workspace = workspace_dir(args.workspace)
    kept = _index_serving(workspace, name, target)
    return {
        "dry_run": True,
        "production": {"from": current, "to": target},
        "index": {
            "serves": published_model_label(workspace / "indexes", IndexConfig().name),
            "would_serve": f"{name}@{target}",
            "how": f"move current to kept index version {kept}" if kept else "publish (incremental)",
        }
        if not args.alias_only
        else "unchanged (--alias-only)",
    }


def _restore_index(args: argparse.Namespace, previous: str | None) -> None:
    """Put the index back where it was when the alias move after a publication did not land."""
    from denseflow.model.config import IndexConfig
    from denseflow.model.index.store import rollback as index_rollback

    if previous is not None:
        index_rollback(workspace_dir(args.workspace) / "indexes", IndexConfig().name, to=previous)


def _current_index(args: argparse.Namespace) -> str | None:
    from denseflow.model.config import IndexConfig
    from denseflow.model.index.store import read_pointer

    return read_pointer(workspace_dir(args.workspace) / "indexes", IndexConfig().name)


def _move_both(args: argparse.Namespace, name: str, target: str, move) -> int:  # noqa: ANN001 - () -> dict
    """Publish (or re-point) the index for ``target``, then move the alias; a failed publication leaves both as
    they were, and an alias move that does not land puts the index back."""
    from denseflow.model.index.build import PublishedIndexError
    from denseflow.model.workspace import LockTimeout
    from denseflow.registry.aliases import ProductionChanged

    command = args.command
    previous_index = _current_index(args)
    published = None
    if not args.alias_only:
        try:
            published = _serve(args, name, target)
        except (PublishedIndexError, OSError, ValueError, RuntimeError) as err:
            print(
                f"denseflow {command}: publishing {name}/{target} failed, production unchanged: {err}", file=sys.stderr
            )
            return 1
    try:
        result = move()
    except (ProductionChanged, LockTimeout) as err:
        if published is not None:
            _restore_index(args, previous_index)
        print(f"denseflow {command}: {err}", file=sys.stderr)
        return 1
    if published is not None:
        result["published"] = published
    print(json.dumps(result, indent=2))
    return 0


def served_system_of(tags: dict[str, str]):  # noqa: ANN201 - denseflow.model.served_system.ServedSystem
    from denseflow.registry.tags import served_record

    return served_record(tags)


def cmd_promote(args: argparse.Namespace) -> int:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from denseflow.registry.aliases import _version_of, production_version, promote

    name = _connect(args)
    try:
        MlflowClient().get_model_version(name, args.version)
        current = _version_of(production_version(MlflowClient(), name))
    except MlflowException as err:
        print(f"denseflow promote: {name} version {args.version}: {err.message}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(json.dumps(_plan(args, name, current, str(args.version)), indent=2))
        return 0
    workspace = workspace_dir(args.workspace)
    return _move_both(
        args, name, str(args.version), lambda: promote(name, args.version, args.reason or "", workspace=workspace)
    )


def cmd_rollback(args: argparse.Namespace) -> int:
    from mlflow.exceptions import MlflowException

    from denseflow.model.promotion import NoPreviousProduction
    from denseflow.registry.aliases import planned_rollback, rollback

    name = _connect(args)
    try:
        current, target = planned_rollback(name)
    except (NoPreviousProduction, MlflowException) as err:
        print(f"denseflow rollback: {name}: {getattr(err, 'message', err)}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(json.dumps(_plan(args, name, current, target), indent=2))
        return 0
    workspace = workspace_dir(args.workspace)
    planned = (current, target)
    return _move_both(
        args, name, target, lambda: rollback(name, args.reason or "", workspace=workspace, planned=planned)
    )


def cmd_status(args: argparse.Namespace) -> int:
    """Production, candidate, what the published index serves, and whether they agree."""
    from mlflow.tracking import MlflowClient

    from denseflow.model.config import IndexConfig
    from denseflow.model.index.store import published_model_label, read_pointer
    from denseflow.registry.keys import CANDIDATE, PRODUCTION

    name = _connect(args)
    client = MlflowClient()
    aliases = {}
    for alias in (PRODUCTION, CANDIDATE):
        try:
            aliases[alias] = str(client.get_model_version_by_alias(name, alias).version)
        except Exception:  # noqa: BLE001 - an unset alias is a state to show, not an error
            aliases[alias] = None
    root = workspace_dir(args.workspace) / "indexes"
    serves = published_model_label(root, IndexConfig().name)
    expected = f"{name}@{aliases[PRODUCTION]}" if aliases[PRODUCTION] else None
    status = {
        "registered_model": name,
        "production": aliases[PRODUCTION],
        "candidate": aliases[CANDIDATE],
        "index": {"name": IndexConfig().name, "version": read_pointer(root, IndexConfig().name), "serves": serves},
        "agree": serves == expected,
    }
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        rows = [
            ("production", status["production"] or "-"),
            ("candidate", status["candidate"] or "-"),
            ("index serves", f"{serves or 'nothing'} ({status['index']['version'] or 'unpublished'})"),
            ("agree", "yes" if status["agree"] else f"NO: production is {expected or 'unset'}"),
        ]
        width = max(len(key) for key, _ in rows)
        print("\n".join(f"{key.ljust(width)}  {value}" for key, value in rows))
    return 0 if status["agree"] or not aliases[PRODUCTION] else 1


def cmd_compare(args: argparse.Namespace) -> int:
    from denseflow.flows.compare import compare

    name = _connect(args)
    tracking = _tracking(args).model_copy(update={"registered_model": name})
    result = compare(
        args.a,
        args.b,
        workspace=workspace_dir(args.workspace),
        data=args.data,
        split=args.split,
        queries_file=args.queries,
        tracking=tracking,
    )
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print((Path(result["folder"]) / "compare.md").read_text(encoding="utf-8"))
        print(
            f"written to {result['folder']} (compare.md, compare.html, compare.json); MLflow run {result['mlflow_run_id']}"
        )
    return 0


DEFAULT_PREFECT_UI_PORT = 4200


def ui_command(uri: str, workspace: Path, host: str, port: int) -> list[str]:
    """``mlflow ui`` on the workspace store; new experiments keep their artifacts in the workspace too."""
    artifacts = (workspace / "mlartifacts").as_uri()
    return [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--default-artifact-root",
        artifacts,
        # One process: a local dashboard needs no more, and uvicorn's multi-worker supervisor kills workers
        # that are slow to answer its health check, which on a loaded machine can be all of them.
        "--workers",
        "1",
        "--host",
        host,
        "--port",
        str(port),
    ]


def prefect_ui(args: argparse.Namespace) -> int:
    """The Prefect UI that shows the runs ``denseflow`` made: the server at ``PREFECT_API_URL`` when one is set, else
    a server on the workspace's Prefect home (the database each command's temporary API wrote to)."""
    api = os.environ.get("PREFECT_API_URL")
    if api:
        print(
            f"Prefect UI of the server denseflow runs against (PREFECT_API_URL): {api.rstrip('/').removesuffix('/api')}"
        )
        return 0
    home = workspace_dir(args.workspace) / "prefect"
    port = args.port if args.port != DEFAULT_UI_PORT else DEFAULT_PREFECT_UI_PORT
    print(
        f"Prefect UI on the workspace's Prefect home {home}: http://{args.host}:{port}  (Ctrl-C stops it; "
        f"scheduled runs need a server that stays up: `make stack`, then PREFECT_API_URL)",
        flush=True,
    )
    env = os.environ | {"PREFECT_HOME": str(home)}
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", args.host, "--port", str(port)]
    try:
        return subprocess.call(command, env=env)
    except KeyboardInterrupt:
        return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from denseflow.tasks.tracking import tracking_uri

    if args.prefect:
        return prefect_ui(args)
    workspace = workspace_dir(args.workspace)
    uri = tracking_uri(_tracking(args), workspace)
    if uri.startswith(("http://", "https://")):
        print(f"MLflow tracking server (already running): {uri}")
        return 0
    print(f"MLflow UI on {uri}: http://{args.host}:{args.port}  (Ctrl-C stops it)", flush=True)
    # MLflow 3 otherwise starts ~8 background job processes (GenAI evaluation jobs) that a dashboard never uses.
    env = os.environ | {
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": os.environ.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    }
    try:
        return subprocess.call(ui_command(uri, workspace, args.host, args.port), env=env)
    except KeyboardInterrupt:
        return 0


def add_model_commands(commands: argparse._SubParsersAction) -> None:
    """Register the sub-commands on ``denseflow``'s sub-parser (imports stay lazy: parsing is instant)."""

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--workspace", type=Path, help="workspace folder (default: $DENSEFLOW_HOME or ./.denseflow)"
        )
        parser.add_argument("--config", type=Path, help="retrain YAML whose tracking: section names the store")

    def registry(parser: argparse.ArgumentParser) -> None:
        common(parser)
        parser.add_argument("--name", help="registered model (default: tracking.registered_model, 'retriever')")

    models = commands.add_parser("models", help="registered model versions")
    actions = models.add_subparsers(dest="models_command", required=True)
    listing = actions.add_parser("list", help="versions, aliases, key metrics, data fingerprint, gate decision")
    listing.add_argument("--json", action="store_true")
    registry(listing)
    listing.set_defaults(handler=cmd_models_list)
    show = actions.add_parser("show", help="a version's model card: data, negatives, recipe, figures, gate decision")
    show.add_argument("version")
    show.add_argument("--json", action="store_true")
    registry(show)
    show.set_defaults(handler=cmd_models_show)

    def moves(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--reason", help="why; stored with the move")
        parser.add_argument("--dry-run", action="store_true", help="print what would change; change nothing")
        parser.add_argument(
            "--alias-only", action="store_true", help="move the alias and leave the published index as it is"
        )
        registry(parser)

    promote = commands.add_parser(
        "promote", help="serve VERSION: publish its index (or re-point to a kept one), then move production"
    )
    promote.add_argument("version")
    moves(promote)
    promote.set_defaults(handler=cmd_promote)

    rollback = commands.add_parser(
        "rollback", help="serve the previous production version again: its kept index and the production alias"
    )
    moves(rollback)
    rollback.set_defaults(handler=cmd_rollback)

    comparing = commands.add_parser(
        "compare", help="two systems (versions, aliases or base) as served: paired tests, ranking changes, latency"
    )
    comparing.add_argument("a", help="the system now (a version number, an alias such as production, or base)")
    comparing.add_argument("b", help="the system that would replace it")
    comparing.add_argument("--data", type=Path, help="BEIR folder (default: the data B, else A, was trained on)")
    comparing.add_argument("--split", default="test", help="judged split compared (default: %(default)s)")
    comparing.add_argument("--queries", type=Path, help="a file of queries, one a line, for the ranking changes")
    comparing.add_argument("--json", action="store_true")
    registry(comparing)
    comparing.set_defaults(handler=cmd_compare)

    status = commands.add_parser("status", help="production, candidate, what the index serves, and whether they agree")
    status.add_argument("--json", action="store_true")
    registry(status)
    status.set_defaults(handler=cmd_status)

    ui = commands.add_parser("ui", help="start the MLflow UI on the workspace store and print its URL")
    ui.add_argument("--host", default=DEFAULT_UI_HOST, help="bind address (default: %(default)s)")
    ui.add_argument("--port", type=int, default=DEFAULT_UI_PORT)
    ui.add_argument("--prefect", action="store_true", help="the Prefect UI with denseflow's runs instead of MLflow's")
    common(ui)
    ui.set_defaults(handler=cmd_ui)
