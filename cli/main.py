"""The ``denseflow`` command: one sub-command per user action; each parses arguments and calls a flow."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from denseflow.cli import overrides
from denseflow.cli.compare_negatives import add_compare_negatives_command
from denseflow.cli.index import add_index_commands
from denseflow.cli.models import add_model_commands
from denseflow.cli.schedule import add_schedule_command
from denseflow.model.workspace import workspace_dir

Handler = Callable[[argparse.Namespace], int]


def _prepare_environment() -> None:
    """Prefect's local state goes in the workspace unless the user points Prefect elsewhere."""
    os.environ.setdefault("PREFECT_HOME", str(workspace_dir() / "prefect"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # No network here, and a failed telemetry write races the ephemeral server's SQLite at start-up.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Prefect's 20 s default is too short for the ephemeral API server (it imports the whole server) on a loaded
    # machine; the wait is only a bound, a quick start returns at once.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # MLflow's HTTP defaults (7 retries, backoff factor 2, 120 s timeout) make an unreachable tracking server
    # fail only after ~5 minutes; a user who has not chosen otherwise learns within seconds.
    for name, value in MLFLOW_HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)


MLFLOW_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
# Commands that run a Prefect flow, and so may start Prefect's temporary API server.
FLOW_COMMANDS = ("retrain", "publish", "compare-negatives", "promote", "rollback", "compare")
# Commands that open the MLflow store (retrain checks the URI its configuration resolves to, in its preflight).
STORE_COMMANDS = ("publish", "compare-negatives", "promote", "rollback", "models", "ui", "compare", "status")
DEBUG_ENV = "DENSEFLOW_DEBUG"


class UserError(Exception):
    """Ends the command with one line on stderr and exit status 2."""


# Tracking URIs that name a database server (MLflow's SQLAlchemy store), optionally with a driver: postgresql+psycopg2.
DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")


def check_tracking_reachable(uri: str, timeout: float = 5.0) -> None:
    """An ``http(s)://`` tracking URI must answer within ``timeout``, a database one must accept its credentials;
    a local store needs no check."""
    if uri.split("://", 1)[0].split("+", 1)[0] in DATABASE_SCHEMES:
        check_tracking_database(uri, timeout)
        return
    if not uri.startswith(("http://", "https://")):
        return
    import httpx

    try:
        httpx.get(uri.rstrip("/") + "/health", timeout=timeout)
    except httpx.HTTPError as err:
        raise UserError(f"MLflow tracking server {uri} is unreachable ({type(err).__name__}: {err})") from err


def check_tracking_database(uri: str, timeout: float = 5.0) -> None:
    """Connect once, without MLflow: MLflow retries a refused database connection for about 100 s, printing the
    driver's multi-line error each time, before the command could say anything."""
    import sqlalchemy

    try:
        url = sqlalchemy.engine.make_url(uri)
    except sqlalchemy.exc.ArgumentError as err:
        raise UserError(f"MLflow tracking URI is not a database URL: {err}") from err
    shown = url.render_as_string(hide_password=True)
    connect_args = {"connect_timeout": max(1, int(timeout))} if url.get_backend_name() != "mssql" else {}
    try:
        engine = sqlalchemy.create_engine(url, connect_args=connect_args, poolclass=sqlalchemy.pool.NullPool)
        with engine.connect():
            pass
    except ModuleNotFoundError as err:
        hint = " (or name psycopg2 in the URI: postgresql+psycopg2://)" if err.name == "psycopg" else ""
        raise UserError(f"MLflow tracking store {shown} needs the database driver {err.name!r}{hint}") from err
    except sqlalchemy.exc.SQLAlchemyError as err:
        reason = _one_line(getattr(err, "orig", None) or err)
        raise UserError(f"MLflow tracking store {shown} refused the connection: {reason}") from err


def check_tracking_env(command: str) -> None:
    """``MLFLOW_TRACKING_URI`` checked before a command that opens the store (a retrain checks its config's URI)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri and command in STORE_COMMANDS:
        check_tracking_reachable(uri)


def preflight_retrain(config) -> None:  # noqa: ANN001 - denseflow.model.config.RetrainConfig
    """What a retrain would otherwise find out minutes in, inside Prefect's logs: the store and the data."""
    from denseflow.model.workspace import tracking_uri

    check_tracking_reachable(tracking_uri(config.tracking.tracking_uri, config.workspace))
    from denseflow.model.data.ingest import load_run_source
    from denseflow.model.data.io import DataError, RejectLog

    try:
        load_run_source(config.data, RejectLog())
    except DataError as err:
        raise UserError(f"{err} (run `denseflow ingest` on it to see the rejected rows)") from err
    # The gate compares every candidate with the base model's own system: a base that cannot be loaded would
    # fail the run after training, so it fails here, before anything is registered.
    base = config.train.base_model
    if base is not None and not (Path(base) / "modules.json").is_file():
        raise UserError(f"train.base_model {base}: not a sentence-transformers model folder (no modules.json)")


def cmd_retrain(args: argparse.Namespace) -> int:
    from denseflow.model.config import RetrainConfig

    config = RetrainConfig.model_validate(overrides.build(args.config, sets=args.overrides))
    preflight_retrain(config)  # before the flow's imports (torch, sentence-transformers): seconds, not a minute
    from denseflow.flows.retrain import retrain

    result = retrain(config)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        from denseflow.cli.render import print_retrain_summary

        print_retrain_summary(result)
    return 0


CLICK_FLAGS = ("rule", "dwell_threshold", "ctr_threshold", "min_impressions", "propensity")


def cmd_ingest(args: argparse.Namespace) -> int:
    from denseflow.model.config import DataConfig, RetrainConfig
    from denseflow.model.data.beir import DataError
    from denseflow.model.data.ingest import ingest

    flags: dict[str, Any] = {f"data.{name}": getattr(args, name) for name in ("source", "path", "corpus")}
    flags |= {f"data.{name}": getattr(args, name) for name in ("min_usable_share", "max_line_bytes")}
    flags |= {f"data.clicks.{name}": getattr(args, name) for name in CLICK_FLAGS}
    if args.splits:
        flags["data.splits"] = {name: float(share) for name, share in (i.split("=") for i in args.splits.split(","))}
    if args.judged_eval:
        flags["data.judged_eval"] = True
    if args.config:
        RetrainConfig.from_yaml(args.config)  # the whole file is checked, as `retrain --config` would
    data = overrides.build(args.config, flags, args.overrides).get("data", {})
    if data.get("judged_eval"):
        data.setdefault("splits", {"train": 0.9, "dev": 0.1})  # the judged split replaces the hashed test share
    try:
        result = ingest(DataConfig.model_validate(data), args.out)
    except DataError as err:
        print(f"denseflow ingest: {err} (rejected rows: {args.out / 'rejects.jsonl'})", file=sys.stderr)
        return 2
    print(
        json.dumps({"folder": str(result.folder), "fingerprint": result.fingerprint, **vars(result.report)}, indent=2)
    )
    return 0


def cmd_simulate_clicks(args: argparse.Namespace) -> int:
    from denseflow.model.data.beir import RejectLog, bundled_scifact_dir, load_beir
    from denseflow.model.data.simulate import ClickModel, simulate_clicks

    dataset = load_beir(args.dataset or bundled_scifact_dir(), [args.split], RejectLog())
    model = ClickModel(
        impressions_per_query=args.impressions_per_query,
        eta=args.eta,
        click_nonrelevant=args.noise,
        seed=args.seed,
    )
    report = simulate_clicks(dataset, args.split, args.out, model, max_queries=args.queries, progress=True)
    summary = {key: value for key, value in vars(report).items() if key != "query_ids"}
    print(json.dumps(summary | {"shown_share": report.shown_share}, indent=2))
    return 0


CONFIGS = {"retrain": "RetrainConfig", "publish": "PublishConfig", "compare-negatives": "CompareNegativesConfig"}


def cmd_config(args: argparse.Namespace) -> int:
    """Every setting of a flow's configuration as a run with these arguments would use it, with its meaning, as
    a markdown table (the flow's defaults when no --config or --set is given)."""
    from denseflow.model import config

    if args.markdown:
        print(configuration_reference(), end="")
        return 0
    model = getattr(config, CONFIGS[args.flow])
    effective = model.model_validate(overrides.build(args.config, sets=args.overrides))
    given = bool(args.config or args.overrides)
    print(f"| key | {'value' if given else 'default'} | meaning |\n|---|---|---|")
    for key, value, description in config.describe(model, defaults=effective):
        print(f"| `{key}` | `{value}` | {description} |")
    return 0


def configuration_reference() -> str:
    """docs/configuration.md: every flow's settings with defaults and meanings, generated from the models."""
    from denseflow.model import config

    parts = [
        "# Configuration\n",
        "Generated by `denseflow config --markdown` from the pydantic models in `model/config.py`; "
        "`tests/model/test_config.py` fails when this file and the code disagree. Every flow takes one configuration, "
        "loadable from YAML (`--config`); unknown keys are errors. `--set section.key=value` overrides one key, "
        "and a section given in YAML or `--set` merges key by key over the flow's own defaults. "
        "`denseflow config FLOW --config F --set k=v` prints what a run with those arguments would use.\n",
    ]
    for flow, name in CONFIGS.items():
        parts.append(f"\n## `{flow}`\n\n| key | default | meaning |\n|---|---|---|\n")
        for key, default, description in config.describe(getattr(config, name)):
            parts.append(f"| `{key}` | `{default}` | {description} |\n")
    return "".join(parts)


def _printable(text: str) -> str:
    """Control characters escaped: an argument holding a newline or carriage return must not split the error."""
    return "".join(char if char.isprintable() or char == " " else repr(char)[1:-1] for char in text)


class _Parser(argparse.ArgumentParser):
    """argparse, with the user's own argument text escaped in its one-line errors (sub-commands inherit it)."""

    def error(self, message: str) -> NoReturn:
        super().error(_printable(message))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="denseflow", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    retrain = commands.add_parser("retrain", help="ingest → mine → train → evaluate → register (the default run)")
    retrain.add_argument("--config", type=Path, help="YAML configuration (defaults: bundled SciFact + MiniLM)")
    retrain.add_argument("--json", action="store_true", help="print the whole summary as JSON instead of tables")
    overrides.add_set_argument(retrain)
    retrain.set_defaults(handler=cmd_retrain)

    ingest = commands.add_parser("ingest", help="normalise a BEIR folder, click log or QA pairs to a BEIR folder")
    ingest.add_argument("--source", choices=["beir", "clicks", "qa"], required=True)
    ingest.add_argument("--path", type=Path, help="BEIR folder, or click-log / QA file or folder")
    ingest.add_argument("--out", type=Path, required=True, help="output folder (BEIR layout + rejects.jsonl)")
    ingest.add_argument("--config", type=Path, help="YAML whose data: section gives the defaults")
    ingest.add_argument("--corpus", type=Path, help="corpus the doc ids refer to / passages join")
    ingest.add_argument("--judged-eval", action="store_true", help="evaluation split from the corpus's judgments")
    ingest.add_argument("--splits", help="shares by query hash, e.g. train=0.8,dev=0.1,test=0.1")
    ingest.add_argument("--rule", choices=["dwell", "ctr"])
    ingest.add_argument("--dwell-threshold", type=float)
    ingest.add_argument("--ctr-threshold", type=float)
    ingest.add_argument("--min-impressions", type=int)
    ingest.add_argument("--propensity", choices=["none", "power", "table"])
    ingest.add_argument("--min-usable-share", type=float)
    ingest.add_argument("--max-line-bytes", type=int)
    overrides.add_set_argument(ingest)
    ingest.set_defaults(handler=cmd_ingest)

    simulate = commands.add_parser("simulate-clicks", help="write a SYNTHETIC position-biased click log")
    simulate.add_argument("--out", type=Path, required=True, help="log file (.jsonl or .jsonl.gz)")
    simulate.add_argument("--dataset", type=Path, help="BEIR folder (default: bundled SciFact)")
    simulate.add_argument("--split", default="train", help="judged split whose queries users search")
    simulate.add_argument("--queries", type=int, help="sample this many queries (default: all)")
    simulate.add_argument("--impressions-per-query", type=float, default=20.0)
    simulate.add_argument("--eta", type=float, default=1.0, help="examination (1/position)^eta")
    simulate.add_argument("--noise", type=float, default=0.1, help="click probability of an examined non-relevant")
    simulate.add_argument("--seed", type=int, default=0)
    simulate.set_defaults(handler=cmd_simulate_clicks)

    reference = commands.add_parser(
        "config", help="print every setting a flow would run with (its defaults, or with --config / --set applied)"
    )
    reference.add_argument("flow", choices=list(CONFIGS), nargs="?", default="retrain")
    reference.add_argument("--config", type=Path, help="YAML configuration to apply over the defaults")
    reference.add_argument("--markdown", action="store_true", help="every flow's reference (docs/configuration.md)")
    overrides.add_set_argument(reference)
    reference.set_defaults(handler=cmd_config)

    add_index_commands(commands)  # publish, index list|rollback, search, serve
    add_model_commands(commands)  # models list, promote, rollback, ui
    add_compare_negatives_command(commands)  # compare-negatives: the negatives study
    add_schedule_command(commands)  # schedule: the retrain deployment on a Prefect server

    return parser


def _undecodable(argv: list[str]) -> str | None:
    """The first argument that is not valid UTF-8 (Python keeps such bytes as lone surrogates), shown safely."""
    for arg in argv:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            return arg.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return None


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def main(argv: list[str] | None = None) -> int:
    from denseflow.cli.orphans import guard_prefect_server, install_signal_handlers

    argv = sys.argv[1:] if argv is None else list(argv)
    bad = _undecodable(argv)
    if bad is not None:
        print(f"denseflow: error: argument {bad!r} is not valid UTF-8", file=sys.stderr)
        return 2
    _prepare_environment()
    args = build_parser().parse_args(argv)
    install_signal_handlers()
    if args.command in FLOW_COMMANDS:
        guard_prefect_server()
    handler: Handler = args.handler
    try:
        check_tracking_env(args.command)
        return handler(args)
    except UserError as err:
        print(f"denseflow {args.command}: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        # Anything unexpected: one line, and the traceback only when asked for.
        if os.environ.get(DEBUG_ENV):
            raise
        print(
            f"denseflow {args.command}: error: {type(err).__name__}: {_one_line(err)} "
            f"(set {DEBUG_ENV}=1 for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
