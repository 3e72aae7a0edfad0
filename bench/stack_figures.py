"""The figures of docs/operations.md's local-stack section: start-up, one retrain, two overlapping retrains.

A fresh stack folder (``deploy/stack.py up --dir``, so PostgreSQL's cluster, MLflow's schema and Prefect's are all
created: the cold start), then, with the tiny configuration of tests/deploy/test_stack.py (2-layer 32-dim random
BERT, 36 documents, 24 training queries; the servers' and processes' own costs dominate):

- the same retrain embedded (``denseflow retrain --config``: Prefect's temporary server, MLflow on SQLite in the
  workspace), wall time of the command;
- one retrain through the stack's ``retrain`` deployment (flow run created over the API → COMPLETED);
- two at once through ``retrain`` itself (its ``concurrency_limit: 1`` queues the second);
- two at once through the same deployment without the limit (they overlap on the two workers).

Each case uses a fresh workspace and registered model, so every first run meets an empty registry.

    flock /tmp/denseflow-heavy.lock .venv/bin/python bench/stack_figures.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.conftest import build_tiny_model, write_tiny_beir  # noqa: E402
from tests.deploy.test_stack import Prefect, deploy_file, tiny_config, without_limit  # noqa: E402

BIN = Path(sys.executable).parent


def stack(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "deploy" / "stack.py"), *args, "--dir", str(folder)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
    )


def timed_runs(prefect: Prefect, deployment: str, configs: list[dict]) -> tuple[float, list[float]]:
    """Wall time from creating the runs to the last COMPLETED, and each run's own start→end seconds."""
    started = time.monotonic()
    ids = [prefect.start(deployment, config) for config in configs]
    runs = [prefect.wait(run_id) for run_id in ids]
    wall = time.monotonic() - started
    bad = [run["state"] for run in runs if run["state"]["type"] != "COMPLETED"]
    if bad:
        raise SystemExit(f"runs did not complete: {bad}")
    return wall, [run["total_run_time"] for run in runs]


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="denseflow-bench-stack-", dir="/tmp"))
    root.chmod(0o755)  # PostgreSQL runs as the postgres user
    model = build_tiny_model(root / "bert")
    beir = write_tiny_beir(root / "beir")
    figures: dict[str, object] = {"cpu": cpu(), "date": time.strftime("%Y-%m-%d")}

    config = tiny_config(root, beir, model, "embedded")
    path = root / "embedded.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    started = time.monotonic()
    done = subprocess.run([str(BIN / "denseflow"), "retrain", "--config", str(path), "--json"], env=env,
                          capture_output=True, text=True, cwd=REPO)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    figures["embedded_retrain_s"] = round(time.monotonic() - started, 1)

    folder = root / "stack"
    started = time.monotonic()
    up = stack(folder, "up")
    if up.returncode != 0:
        raise SystemExit(up.stdout + up.stderr)
    figures["stack_cold_up_s"] = round(time.monotonic() - started, 1)
    try:
        state = json.loads((folder / "stack.json").read_text())
        api = f"http://127.0.0.1:{state['ports']['prefect']}/api"
        auth = state["credentials"]["prefect_auth_string"]  # the stack's Prefect server wants it from every client
        prefect = Prefect(api, auth)
        figures["stack_retrain_s"], _ = timed_runs(prefect, "retrain", [tiny_config(root, beir, model, "one")])

        wall, each = timed_runs(prefect, "retrain", pair(root, beir, model, "queued"))
        figures["two_queued"] = {"wall_s": round(wall, 1), "each_s": [round(s, 1) for s in each]}

        cli_env = os.environ | {
            "PREFECT_API_URL": api,
            "PREFECT_HOME": str(folder / "prefect-home"),
            "PREFECT_API_AUTH_STRING": auth,
        }
        deploy_file(folder, cli_env, without_limit(), "bench")
        wall, each = timed_runs(prefect, "retrain-overlap", pair(root, beir, model, "overlap"))
        figures["two_overlapping"] = {"wall_s": round(wall, 1), "each_s": [round(s, 1) for s in each]}
        figures["stack_retrain_s"] = round(figures["stack_retrain_s"], 1)
        started = time.monotonic()
        stack(folder, "down")
        figures["down_s"] = round(time.monotonic() - started, 1)
        started = time.monotonic()
        stack(folder, "up")
        figures["stack_warm_up_s"] = round(time.monotonic() - started, 1)
    finally:
        stack(folder, "down")
    print(json.dumps(figures, indent=2))


def pair(root: Path, beir: Path, model: Path, name: str) -> list[dict]:
    """Two retrains of one registered model and workspace that differ in their training seed, so each trains
    (same settings would make the second wait for the first's training folder and reuse it)."""
    first = tiny_config(root, beir, model, name)
    second = json.loads(json.dumps(first))
    second["train"]["seed"] = 43
    return [first, second]


def cpu() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    name = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?")
    return f"{name}, {os.cpu_count()} cores"


if __name__ == "__main__":
    main()
