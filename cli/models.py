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
                          "card": version.description}, indent=2))  # fmt: skip
        return 0
    print(version.description or f"{name} version {version.version} has no model card (registered before cards).")
    print(f"\naliases: {', '.join(version.aliases) or 'none'}; run {version.run_id}")
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    from mlflow.exceptions import MlflowException

    from denseflow.model.workspace import LockTimeout
    from denseflow.registry.aliases import ProductionChanged, promote

    name = _connect(args)
    try:
        result = promote(name, args.version, args.reason or "", workspace=workspace_dir(args.workspace))
    except (ProductionChanged, LockTimeout) as err:
        print(f"denseflow promote: {err}", file=sys.stderr)
        return 1
    except MlflowException as err:
        print(f"denseflow promote: {name} version {args.version}: {err.message}", file=sys.stderr)
        return 2
    if args.publish:
        result["published"] = _publish(args, name, result["production"])
    print(json.dumps(result, indent=2))
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from mlflow.exceptions import MlflowException

    from denseflow.model.promotion import NoPreviousProduction
    from denseflow.model.workspace import LockTimeout
    from denseflow.registry.aliases import ProductionChanged, rollback

    name = _connect(args)
    try:
        result = rollback(name, args.reason or "", workspace=workspace_dir(args.workspace))
    except (ProductionChanged, LockTimeout) as err:
        print(f"denseflow rollback: {err}", file=sys.stderr)
        return 1
    except (NoPreviousProduction, MlflowException) as err:
        print(f"denseflow rollback: {name}: {getattr(err, 'message', err)}", file=sys.stderr)
        return 2
    if args.publish:
        result["published"] = _publish(args, name, result["production"])
    print(json.dumps(result, indent=2))
    return 0


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


def cmd_ui(args: argparse.Namespace) -> int:
    from denseflow.tasks.tracking import tracking_uri

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

    promote = commands.add_parser("promote", help="point production at VERSION (recorded in the history)")
    promote.add_argument("version")
    promote.add_argument("--reason", help="why; stored with the move")
    promote.add_argument("--publish", action="store_true", help="then publish its index (re-encodes the corpus)")
    registry(promote)
    promote.set_defaults(handler=cmd_promote)

    rollback = commands.add_parser("rollback", help="point production back at the previous production version")
    rollback.add_argument("--reason", help="why; stored with the move")
    rollback.add_argument("--publish", action="store_true", help="then publish its index (re-encodes the corpus)")
    registry(rollback)
    rollback.set_defaults(handler=cmd_rollback)

    ui = commands.add_parser("ui", help="start the MLflow UI on the workspace store and print its URL")
    ui.add_argument("--host", default=DEFAULT_UI_HOST, help="bind address (default: %(default)s)")
    ui.add_argument("--port", type=int, default=DEFAULT_UI_PORT)
    common(ui)
    ui.set_defaults(handler=cmd_ui)
