"""The ``denseflow`` command: one sub-command per user action; each parses arguments and calls a flow."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from model.workspace import workspace_dir

Handler = Callable[[argparse.Namespace], int]


def _prepare_environment() -> None:
    """Prefect's local state goes in the workspace unless the user points Prefect elsewhere."""
    os.environ.setdefault("PREFECT_HOME", str(workspace_dir() / "prefect"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def cmd_retrain(args: argparse.Namespace) -> int:
    from flows.retrain import retrain
    from model.config import RetrainConfig

    config = RetrainConfig.from_yaml(args.config) if args.config else RetrainConfig()
    result = retrain(config)
    print(json.dumps(result, indent=2, default=str))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="denseflow", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    retrain = commands.add_parser("retrain", help="ingest → mine → train → evaluate → register (the default run)")
    retrain.add_argument("--config", type=Path, help="YAML configuration (defaults: bundled SciFact + MiniLM)")
    retrain.set_defaults(handler=cmd_retrain)

    return parser


def main(argv: list[str] | None = None) -> int:
    _prepare_environment()
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
