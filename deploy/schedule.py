"""One-machine scheduled retraining: ``python deploy/schedule.py`` serves the ``retrain`` deployment itself.

The schedule, parameters and concurrency limit are read from deploy/prefect.yaml, so both paths run the
same deployment; here no work pool or worker is needed: this process polls the Prefect server and runs
each scheduled or triggered flow run in a subprocess. It needs a server (``prefect server start``, then
``PREFECT_API_URL=http://127.0.0.1:4200/api``); stop it with Ctrl-C.

    python deploy/schedule.py                      # weekly, parameters as in prefect.yaml
    python deploy/schedule.py --config my.yaml     # a retrain YAML merged over those parameters
    python deploy/schedule.py --set train.max_steps=40   # one setting, the same way as the denseflow command
    prefect deployment run retrain/retrain      # trigger a run now
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PREFECT_FILE = HERE / "prefect.yaml"


def deployment_spec(name: str = "retrain", prefect_file: Path = PREFECT_FILE) -> dict[str, Any]:
    spec = yaml.safe_load(prefect_file.read_text(encoding="utf-8"))
    for deployment in spec.get("deployments") or []:
        if deployment.get("name") == name:
            return deployment
    raise SystemExit(f"{prefect_file}: no deployment named {name!r}")


def serve_options(spec: dict[str, Any], config_override: dict[str, Any] | None = None) -> dict[str, Any]:
    """``Flow.serve`` keyword arguments equivalent to the prefect.yaml deployment ``spec``."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig
    from prefect.schedules import Cron

    from denseflow.cli.overrides import merge

    parameters = dict(spec.get("parameters") or {})
    if config_override:
        parameters["config"] = merge(parameters.get("config") or {}, config_override)
    schedules = [
        Cron(item["cron"], timezone=item.get("timezone"), active=item.get("active", True))
        for item in spec.get("schedules") or []
    ]
    limit = spec.get("concurrency_limit")
    if isinstance(limit, int):
        limit = {"limit": limit}
    return {
        "name": spec["name"],
        "description": spec.get("description"),
        "tags": spec.get("tags"),
        "schedules": schedules,
        "parameters": parameters,
        # The deployment's own limit (server-side, like prefect.yaml's) and this process's run slots.
        "global_limit": ConcurrencyLimitConfig(**limit) if limit else None,
        "limit": limit["limit"] if limit else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="retrain YAML merged over prefect.yaml's config parameter")
    parser.add_argument("--name", default="retrain", help="deployment in prefect.yaml (default: %(default)s)")
    sys.path.insert(0, str(REPO))  # the repository's packages, installed or not
    from denseflow.cli import overrides

    overrides.add_set_argument(parser)
    args = parser.parse_args(argv)

    spec = deployment_spec(args.name)
    # The runs' environment, as a worker would give them prefect.yaml's job variables (unless set here already).
    for key, value in ((spec.get("work_pool") or {}).get("job_variables") or {}).get("env", {}).items():
        os.environ.setdefault(key, str(value))
    from prefect.settings import get_current_settings

    if not get_current_settings().api.url:
        print(
            "deploy/schedule.py needs a Prefect server: run `prefect server start` and set PREFECT_API_URL",
            file=sys.stderr,
        )
        return 2
    override = None
    if args.config or args.overrides:
        from denseflow.model.config import RetrainConfig

        raw = overrides.build(args.config, sets=args.overrides)
        override = RetrainConfig.model_validate(raw).model_dump(mode="json", exclude_unset=True)
    options = serve_options(spec, override)

    # Runs start in this process's working directory: the repository, like a worker after `prefect deploy`.
    os.chdir(REPO)
    from denseflow.flows.retrain import retrain

    retrain.serve(**options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
