"""``denseflow schedule``: the retrain deployment on a Prefect server, in one command.

A schedule needs a server that outlives the command (the temporary API a ``denseflow`` command starts stops with
it), so ``schedule`` deploys only to ``PREFECT_API_URL`` and says how to start one when it is not set. The
deployment carries the user's validated configuration whole; a process worker on the same installation runs it
(``make stack`` starts one; elsewhere ``prefect worker start --pool POOL``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

DEFAULT_NAME = "retrain"
DEFAULT_POOL = "denseflow"
NO_SERVER = (
    "no Prefect server: a schedule needs one that outlives this command. Start one with `make stack` (or "
    "`prefect server start`), set PREFECT_API_URL=http://127.0.0.1:4200/api, and run this again; nothing deployed"
)
# What deploy/prefect.yaml gives the runs: no network for Hugging Face, and an MLflow server that fails fast.
RUN_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
}


class ScheduleError(RuntimeError):
    """One line for the user; nothing was deployed."""


def parse_every(text: str) -> timedelta:
    """``30m``, ``6h``, ``1d``, ``2w`` (or plain seconds)."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhdw]?)\s*", text)
    if match is None or int(match.group(1)) <= 0:
        raise ScheduleError(f"--every {text!r}: expected a positive number with s, m, h, d or w (e.g. 1d)")
    unit = {"": "seconds", "s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[match.group(2)]
    return timedelta(**{unit: int(match.group(1))})


def server_api() -> str:
    """``PREFECT_API_URL`` when a server answers there."""
    import httpx

    api = os.environ.get("PREFECT_API_URL", "").rstrip("/")
    if not api:
        raise ScheduleError(NO_SERVER)
    try:
        httpx.get(f"{api}/health", timeout=10).raise_for_status()
    except httpx.HTTPError as err:
        raise ScheduleError(f"Prefect API {api} does not answer ({type(err).__name__}); nothing deployed") from err
    return api


def scheduled_config(args: argparse.Namespace) -> dict[str, Any]:
    """The retrain configuration the schedule runs, validated before anything is deployed."""
    from pydantic import ValidationError

    from denseflow.cli.overrides import build
    from denseflow.model.config import RetrainConfig

    try:
        config = RetrainConfig.model_validate(build(args.config, sets=args.overrides or ()))
    except (ValidationError, ValueError, FileNotFoundError) as err:
        first = str(err).splitlines()
        raise ScheduleError(f"{args.config or '--set'}: {' '.join(first[:3])}; nothing deployed") from err
    if config.data.path is not None and not Path(config.data.path).exists():
        raise ScheduleError(f"data.path {config.data.path} does not exist on this machine; nothing deployed")
    if config.data.path is None and not args.sample:
        raise ScheduleError(
            "the configuration sets no data.path, so every scheduled run would retrain on the bundled SciFact sample; "
            "set data.path (or pass --sample to schedule the sample on purpose); nothing deployed"
        )
    # Paths absolute (the worker's folder must not decide what they mean); None kept: a setting the user set to
    # None (bm25.stemmer: none) must not fall back to its default when the run validates the parameters again.
    updates = {"workspace": config.workspace.resolve() if config.workspace else None}
    data = config.data.model_copy(
        update={name: getattr(config.data, name).resolve() for name in ("path", "corpus") if getattr(config.data, name)}
    )
    return config.model_copy(update=updates | {"data": data}).model_dump(mode="json")


def deploy(args: argparse.Namespace) -> str:
    from prefect.schedules import Cron, Interval

    from denseflow.flows.retrain import retrain

    config = scheduled_config(args)
    server_api()
    schedule = Cron(args.cron, timezone=args.timezone) if args.cron else Interval(parse_every(args.every))
    deployment = retrain.to_deployment(
        name=args.name,
        schedules=[schedule],
        parameters={"config": config},
        tags=["denseflow", "retrain"],
        description=f"denseflow retrain on {config.get('data', {}).get('path', 'the bundled SciFact')}",
        concurrency_limit=1,
        job_variables={"env": RUN_ENV},
    )
    return str(deployment.apply(work_pool_name=args.pool))


def _deployment(client: Any, name: str) -> Any:  # noqa: ANN401 - prefect's client and deployment objects
    from prefect.exceptions import ObjectNotFound

    try:
        return client.read_deployment_by_name(f"retrain/{name}")
    except ObjectNotFound as err:
        raise ScheduleError(f"no deployment retrain/{name} on {os.environ.get('PREFECT_API_URL')}") from err


def cmd_schedule(args: argparse.Namespace) -> int:
    from prefect.client.orchestration import get_client

    try:
        if args.list:
            server_api()
            with get_client(sync_client=True) as client:
                rows = [describe(item) for item in client.read_deployments() if item.name and item.entrypoint]
            print(json.dumps(rows, indent=2, default=str))
            return 0
        if args.pause or args.resume:
            server_api()
            with get_client(sync_client=True) as client:
                deployment = _deployment(client, args.name)
                if args.pause:
                    client.pause_deployment(deployment.id)
                else:
                    client.resume_deployment(deployment.id)
            print(f"retrain/{args.name}: {'paused' if args.pause else 'resumed'}")
            return 0
        if args.cron or args.every:
            deployment_id = deploy(args)
            when = f"cron {args.cron!r} ({args.timezone})" if args.cron else f"every {args.every}"
            print(
                f"retrain/{args.name} deployed ({deployment_id}): {when}, work pool {args.pool!r}; "
                f"runs appear in the Prefect UI at {os.environ['PREFECT_API_URL'].removesuffix('/api')}"
            )
        if args.run_now:
            from prefect.deployments import run_deployment

            server_api()
            run = run_deployment(f"retrain/{args.name}", timeout=0)
            print(f"retrain/{args.name}: flow run {run.id} scheduled now")
        if not (args.cron or args.every or args.run_now):
            raise ScheduleError("give --cron or --every (create or update), --run-now, --pause, --resume or --list")
    except ScheduleError as err:
        print(f"denseflow schedule: {err}", file=sys.stderr)
        return 2
    return 0


def describe(deployment: Any) -> dict[str, Any]:  # noqa: ANN401 - a prefect DeploymentResponse
    config = (deployment.parameters or {}).get("config") or {}
    return {
        "name": f"retrain/{deployment.name}",
        "paused": deployment.paused,
        "schedules": [str(item.schedule) for item in deployment.schedules or []],
        "work_pool": deployment.work_pool_name,
        "data": (config.get("data") or {}).get("path", "bundled SciFact"),
    }


def add_schedule_command(commands: argparse._SubParsersAction) -> None:
    from denseflow.cli.overrides import add_set_argument

    schedule = commands.add_parser(
        "schedule", help="create or update the scheduled retrain on the Prefect server (PREFECT_API_URL)"
    )
    schedule.add_argument("--config", type=Path, help="retrain YAML the scheduled runs use (validated first)")
    add_set_argument(schedule)
    when = schedule.add_mutually_exclusive_group()
    when.add_argument("--cron", help='cron expression, e.g. "0 3 * * 1" (Mondays 03:00)')
    when.add_argument("--every", help="interval: 30m, 6h, 1d, 1w")
    schedule.add_argument("--timezone", default="UTC", help="of --cron (default: %(default)s)")
    schedule.add_argument("--name", default=DEFAULT_NAME, help="deployment name (default: %(default)s)")
    schedule.add_argument("--pool", default=DEFAULT_POOL, help="process work pool (default: %(default)s)")
    schedule.add_argument("--sample", action="store_true", help="allow a schedule on the bundled SciFact sample")
    actions = schedule.add_mutually_exclusive_group()
    actions.add_argument("--pause", action="store_true", help="pause the deployment's schedule")
    actions.add_argument("--resume", action="store_true", help="resume it")
    actions.add_argument("--list", action="store_true", help="the deployments on the server, with their data")
    schedule.add_argument("--run-now", action="store_true", help="start a run of the deployment now")
    schedule.set_defaults(handler=cmd_schedule)
