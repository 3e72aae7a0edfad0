"""The local stack for real: PostgreSQL, MLflow and Prefect servers, two process workers, deployment runs.

One stack for the module, started with ``deploy/stack.py up`` in a fresh folder and stopped with ``down``. Each
test has its own registered model, experiment and workspace (the flow's ``workspace`` setting), so the first run
of each test meets an empty registry on a shared server, as a new team's first runs would. The retrains use the
tiny random BERT and the 36-document dataset of tests/conftest.py, so a retrain takes seconds and the servers'
own behaviour is what is measured. ``make test-stack`` runs this module in file order (the overlap case first, on
a store nothing has written to; ``down`` and ``rotate`` last); ``make test`` leaves it out.

The stack runs with credentials (MLflow's basic-auth app, Prefect's auth string): the tests' own clients use the
admin's, from stack.json, as a person who sourced admin.env would; the credential cases are near the end.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import yaml

from tests.conftest import REPO
from tests.deploy.conftest import STACK, fake_http_server, load_stack_module

pytestmark = pytest.mark.stack

BIN = Path(sys.executable).parent
UP_TIMEOUT = 600
RUN_TIMEOUT = 420
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def stack_cli(folder: Path, *args: str, env: dict[str, str] | None = None, timeout: float = UP_TIMEOUT):
    return subprocess.run(
        [sys.executable, str(STACK), *args, "--dir", str(folder)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or os.environ.copy(),
        cwd=REPO,
    )


@contextlib.contextmanager
def hold_port(port: int) -> Iterator[bool]:
    """Listen on ``port`` (if free) for the block: a port in use, as another program would hold it."""
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        held = True
    except OSError:
        held = False  # already taken by something else: just as good
    try:
        yield held
    finally:
        sock.close()


@pytest.fixture(scope="module")
def stack() -> Iterator[SimpleNamespace]:
    # Under /tmp with a traversable mode: PostgreSQL runs as the `postgres` user, and pytest's folders are private.
    folder = Path(tempfile.mkdtemp(prefix="denseflow-stack-", dir="/tmp"))
    folder.chmod(0o755)
    # Workers pick a run up within 2 s, not 10. No credential: `up` makes and hands out its own.
    env = os.environ | {"PREFECT_WORKER_QUERY_SECONDS": "2"}
    module = load_stack_module()
    mlflow_default = module.DEFAULT_PORTS["mlflow"]
    started = time.monotonic()
    with hold_port(mlflow_default):
        up = stack_cli(folder, "up", env=env)
    up_seconds = time.monotonic() - started
    try:
        assert up.returncode == 0, f"stack up failed:\n{up.stdout}\n{up.stderr}"
        state = json.loads((folder / "stack.json").read_text())
        client_env = module.client_env(module.Stack(folder), state)
        admin_env = module.credential_env(state, "admin")
        with pytest.MonkeyPatch.context() as patch:
            # This process's MLflow clients (registry(), `main([...])`) log in as the admin, as a shell that sourced
            # admin.env would; the subprocesses get it in cli_env.
            for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
                patch.setenv(key, admin_env[key])
            yield SimpleNamespace(
                dir=folder,
                module=module,
                env=env,
                up=up,
                up_seconds=up_seconds,
                state=state,
                api=client_env["PREFECT_API_URL"],
                mlflow=client_env["MLFLOW_TRACKING_URI"],
                client_env=client_env,
                credentials=state["credentials"],
                cli_env=os.environ
                | client_env
                | admin_env
                | {"PREFECT_HOME": str(folder / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"},
            )
    finally:
        down = stack_cli(folder, "down", timeout=180)
        print(f"\nstack up in {up_seconds:.0f}s; down: {down.stdout.strip().splitlines()[-1:]}")
        if down.returncode == 0:  # the data outlives `down` by design; a test's stack is not kept
            shutil.rmtree(folder, ignore_errors=True)


def state_of(stack) -> dict:
    return json.loads((stack.dir / "stack.json").read_text())


def tiny_config(tmp: Path, beir: Path, model: Path, name: str, **train: object) -> dict:
    """The tiny retrain of tests/deploy/test_servers.py in its own workspace, registered model and experiment. α 0 keeps
    the base model's weights, so the gate's outcome on an empty registry is fixed: the base model ships."""
    return {
        "workspace": str(tmp / f"ws-{name}"),
        "run_name": name,
        "data": {"path": str(beir)},
        "mining": {"candidates": "bm25", "rank_start": 0, "rank_end": 10},
        "train": {"base_model": str(model), "batch_size": 8, "epochs": 1, "max_seq_length": 32}
        | {"interpolation": 0.0}
        | train,
        "eval": {"batch_size": 16},
        "tracking": {"experiment": name, "registered_model": name},
        "promotion": {"publish_on_promotion": True},
    }


# Long enough to act on a server while the train task runs; tiny steps, so still seconds of training.
LONG_TRAINING = {"epochs": 1, "max_steps": 1500, "save_steps": 500}


def basic_auth(user_and_password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(user_and_password.encode()).decode()}


class Prefect:
    def __init__(self, api: str, auth: str | None = None) -> None:
        """``auth``: the server's auth string (``user:password``), sent as Prefect's own client sends it."""
        self.http = httpx.Client(base_url=api, timeout=30, headers=basic_auth(auth) if auth else {})

    def deployment(self, name: str) -> dict:
        response = self.http.get(f"/deployments/name/retrain/{name}")
        response.raise_for_status()
        return response.json()

    def start(self, deployment: str, config: dict) -> str:
        found = self.deployment(deployment)
        response = self.http.post(
            f"/deployments/{found['id']}/create_flow_run", json={"parameters": {"config": config}}
        )
        response.raise_for_status()
        return response.json()["id"]

    def run(self, run_id: str) -> dict:
        return self.http.get(f"/flow_runs/{run_id}").json()

    def wait(self, run_id: str, timeout: float = RUN_TIMEOUT, states: set[str] = TERMINAL) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):  # the server may be restarting
                run = self.run(run_id)
                if run["state"]["type"] in states:
                    return run
            time.sleep(1)
        raise AssertionError(f"flow run {run_id} not in {states} after {timeout}s: {self.run(run_id)['state']}")

    def wait_task(self, run_id: str, task: str, timeout: float = RUN_TIMEOUT) -> dict:
        """The flow run's task run named ``task`` once it is RUNNING."""
        deadline = time.monotonic() + timeout
        body = {"flow_runs": {"id": {"any_": [run_id]}}}
        while time.monotonic() < deadline:
            for item in self.http.post("/task_runs/filter", json=body).json():
                if item["name"].startswith(f"{task}-") and item["state"]["type"] == "RUNNING":
                    return item
            state = self.run(run_id)["state"]["type"]
            assert state not in TERMINAL, f"flow run ended ({state}) before task {task} ran"
            time.sleep(0.5)
        raise AssertionError(f"task {task} of {run_id} not running after {timeout}s")

    def summary(self, run_id: str) -> str:
        body = {"artifacts": {"key": {"any_": ["retrain-summary"]}}, "flow_runs": {"id": {"any_": [run_id]}}}
        (artifact,) = self.http.post("/artifacts/filter", json=body).json()
        return artifact["data"]


def registry(stack):  # noqa: ANN201 - mlflow.tracking.MlflowClient
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=stack.mlflow, registry_uri=stack.mlflow)


def history(stack, name: str) -> list[dict]:
    return json.loads(registry(stack).get_registered_model(name).tags.get("denseflow.production_history", "[]"))


def published(workspace: Path) -> tuple[str | None, list[str]]:
    """The version ``current`` points at (checksums verified on load), and every version folder there is."""
    from denseflow.model.index.store import list_versions, load_current, read_pointer

    root = workspace / "indexes"
    current = read_pointer(root, "default")
    if current is not None:
        load_current(root, "default", verify=True)
    return current, [item.version for item in list_versions(root, "default")]


def index_label(workspace: Path) -> str | None:
    from denseflow.model.index.store import published_model_label

    return published_model_label(workspace / "indexes", "default")


@pytest.fixture(scope="module")
def prefect(stack) -> Prefect:
    return Prefect(stack.api, stack.credentials["prefect_auth_string"])


@pytest.fixture(scope="module")
def overlap_deployment(stack) -> str:
    """deploy/prefect.yaml's retrain deployment without its one-at-a-time limit, on the same pool: what two
    teams' deployments (or a hand-run retrain beside the weekly one) do to one registry."""
    deploy_file(stack.dir, stack.cli_env, without_limit(), "overlap")
    return "retrain-overlap"


def without_limit() -> dict:
    """deploy/prefect.yaml with its retrain deployment as ``retrain-overlap``: no schedule, no concurrency limit."""
    spec = yaml.safe_load((REPO / "deploy" / "prefect.yaml").read_text())
    (entry,) = [item for item in spec["deployments"] if item["name"] == "retrain"]
    entry = entry | {"name": "retrain-overlap", "schedules": []}
    entry.pop("concurrency_limit")
    return spec | {"deployments": [entry]}


def deploy_file(folder: Path, cli_env: dict[str, str], spec: dict, label: str) -> None:
    """``prefect deploy`` of ``spec`` (a prefect.yaml) written to ``folder``, against the stack in ``cli_env``."""
    path = folder / f"prefect-{label}.yaml"
    path.write_text(yaml.safe_dump(spec))
    done = subprocess.run(
        [str(BIN / "prefect"), "--no-prompt", "deploy", "--prefect-file", str(path), "--all"],
        env=cli_env,
        cwd=REPO,  # the folder the workers start runs in, as `stack.py up` deploys it
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def test_up_moves_off_a_taken_port_and_prints_what_to_export(stack):
    out = stack.up.stdout
    assert f"port {stack.module.DEFAULT_PORTS['mlflow']} is in use: mlflow on" in out
    assert stack.state["ports"]["mlflow"] != stack.module.DEFAULT_PORTS["mlflow"]
    assert f"export MLFLOW_TRACKING_URI={stack.mlflow}" in out
    assert f"export PREFECT_API_URL={stack.api}" in out
    assert f"export DENSEFLOW_HOME={stack.dir / 'workspace'}" in out
    # The credentials are in mode-600 files, named on screen, never shown there.
    assert f"set -a; . {stack.dir / 'admin.env'}; set +a" in out and str(stack.dir / "reader.env") in out
    assert not [secret for secret in secrets_of(stack) if secret in out + stack.up.stderr]
    for name in ("stack.json", "admin.env", "reader.env", "mlflow-auth.ini"):
        assert (stack.dir / name).stat().st_mode & 0o777 == 0o600, name
    status = stack_cli(stack.dir, "status", "--json", timeout=60)
    assert status.returncode == 0, status.stdout + status.stderr
    services = json.loads(status.stdout)["services"]
    assert set(services) == {"postgres", "mlflow", "prefect", "worker-1", "worker-2"}
    assert all(condition.startswith("running") for condition in services.values()), services
    assert json.loads(status.stdout)["env_files"]["reader"] == str(stack.dir / "reader.env")
    # The servers run on PostgreSQL: MLflow's and Prefect's tables are in their databases.
    import psycopg2

    urls = stack.module.urls(stack.state)
    for database, table in (("mlflow", "registered_models"), ("prefect", "flow_run")):
        with contextlib.closing(psycopg2.connect(f"{urls['postgres']}/{database}")) as connection:
            with connection.cursor() as cursor:
                cursor.execute("SELECT to_regclass(%s)", (table,))
                assert cursor.fetchone()[0] == table


def test_two_first_retrains_at_once_on_an_empty_server(
    stack, prefect, overlap_deployment, tmp_path, tiny_beir_dir, tiny_model_dir
):
    name = "overlap"
    assert registry(stack).search_registered_models(f"name = '{name}'") == []
    config = tiny_config(tmp_path, tiny_beir_dir, tiny_model_dir, name)
    # A second training seed: both runs train (the same settings would make one wait for the other's folder).
    other = json.loads(json.dumps(config))
    other["train"]["seed"] = 43
    started = time.monotonic()
    runs = [prefect.start(overlap_deployment, item) for item in (config, other)]
    finished = [prefect.wait(run_id) for run_id in runs]
    wall = time.monotonic() - started
    assert [run["state"]["type"] for run in finished] == ["COMPLETED", "COMPLETED"], [r["state"] for r in finished]
    # They did overlap: each started before the other ended (one worker each).
    first, second = sorted(finished, key=lambda run: run["start_time"])
    assert second["start_time"] < first["end_time"], "the two runs did not overlap"

    client = registry(stack)
    versions = {str(item.version): item for item in client.search_model_versions(f"name = '{name}'")}
    # Each run registered its candidate and the base model's version (α 0: the base model's system wins).
    assert len(versions) == 4
    production = client.get_model_version_by_alias(name, "production")
    assert [v for v, item in versions.items() if "production" in client.get_model_version(name, v).aliases] == [
        str(production.version)
    ]
    moves = history(stack, name)
    assert [(move["version"], move["action"]) for move in moves] == [(str(production.version), "gate")]
    decisions = sorted(client.get_model_version(name, v).tags.get("promotion.decision", "") for v in versions)
    # One base version shipped; the other run's base version stood down (compare-and-set) or was not needed.
    assert decisions.count("base model shipped") >= 1
    loser = [d for d in decisions if d not in ("base model shipped",)]
    assert all(d in ("conflict", "rejected", "") for d in loser), decisions
    summaries = [prefect.summary(run["id"]) for run in finished]
    assert sum("## promotion gate: **base model shipped**" in text for text in summaries) >= 1
    current, versions_published = published(Path(config["workspace"]))
    assert current is not None and len(versions_published) >= 1
    assert index_label(Path(config["workspace"])) == f"{name}@{production.version}"
    print(f"\ntwo overlapping retrains: {wall:.0f}s wall; decisions {decisions}; index versions {versions_published}")


def test_gate_racing_promote_through_the_cli(stack, prefect, tmp_path, tiny_beir_dir, tiny_model_dir, capsys):
    """``denseflow promote 1`` fired the moment the gate has decided (its tags land), while the run registers the
    base model it is about to ship: the person's move lands first, and the gate's compare-and-set stands down."""
    from denseflow.cli.main import main

    name = "race"
    config = tiny_config(tmp_path, tiny_beir_dir, tiny_model_dir, name)
    cli = ["--name", name, "--workspace", config["workspace"]]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", stack.mlflow)
        # The command's imports (MLflow, Prefect's server module for its guard) done once before the race, as
        # they would be in a person's terminal seconds into `denseflow promote`: the move itself is what races.
        assert main(["models", "list", *cli]) == 0
    capsys.readouterr()
    run_id = prefect.start("retrain", config)
    client = registry(stack)
    deadline = time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):  # version 1 not registered yet
            if "promotion.decision" in client.get_model_version(name, "1").tags:
                break
        assert prefect.run(run_id)["state"]["type"] not in TERMINAL
        time.sleep(0.05)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", stack.mlflow)
        # --alias-only: the race is between the two alias moves, not a publication's minutes.
        code = main(["promote", "1", *cli, "--reason", "by hand", "--alias-only"])
    out, err = capsys.readouterr()
    run = prefect.wait(run_id)
    assert run["state"]["type"] == "COMPLETED", run["state"]

    moves = history(stack, name)
    actions = [(move["version"], move["action"]) for move in moves]
    summary = prefect.summary(run_id)
    production = str(client.get_model_version_by_alias(name, "production").version)
    if code == 0 and actions == [("1", "promote")]:
        # The person won: the gate read no production, then found version 1 there, and said so.
        assert json.loads(out)["production"] == "1"
        assert production == "1"
        assert "## promotion gate: **conflict**" in summary
        base = client.get_model_version(name, "2").tags
        assert base["promotion.decision"] == "conflict" and "production moved" in base["promotion.reason"]
        winner = "promote"
        # The run found production without an index and published it.
        assert index_label(Path(config["workspace"])) == f"{name}@1"
    else:
        # The gate won: promote came after it (recorded second) or was told it lost the last-millisecond race.
        assert actions[0] == ("2", "gate")
        if code == 0:
            assert actions[1:] == [("1", "promote")] and production == "1"
        else:
            assert code == 1 and "production moved" in err and err.count("\n") == 1
        winner = "gate"
        # The run published what its gate shipped; `promote --alias-only` moved the alias only.
        assert index_label(Path(config["workspace"])) == f"{name}@2"
    # Both attempts are on record: the moves in the history, the gate's decision on its versions and the run.
    listed = subprocess.run(
        [str(BIN / "denseflow"), "models", "list", "--json", "--name", name, "--workspace", config["workspace"]],
        env=stack.cli_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    rows = {row["version"]: row for row in json.loads(listed.stdout)}
    assert rows["1"]["decision"] and rows["2"]["decision"]
    assert "production" in rows[production]["aliases"]
    print(f"\nrace winner: {winner}; history {actions}")


def kill_service(stack, service: str, sig: int = signal.SIGKILL) -> None:
    record = state_of(stack)["services"][service]
    os.killpg(int(record["pid"]), sig)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and stack.module.pid_alive(int(record["pid"])):
        time.sleep(0.2)


def test_mlflow_killed_during_training(stack, prefect, tmp_path, tiny_beir_dir, tiny_model_dir):
    name = "mlflow-killed"
    config = tiny_config(tmp_path, tiny_beir_dir, tiny_model_dir, name)
    workspace = Path(config["workspace"])
    assert prefect.wait(prefect.start("retrain", config))["state"]["type"] == "COMPLETED"
    client = registry(stack)
    production = str(client.get_model_version_by_alias(name, "production").version)
    index_before = published(workspace)

    long = tiny_config(tmp_path, tiny_beir_dir, tiny_model_dir, name, **LONG_TRAINING)
    run_id = prefect.start("retrain", long)
    prefect.wait_task(run_id, "train")
    before = {service: record["pid"] for service, record in state_of(stack)["services"].items()}
    kill_service(stack, "mlflow")
    killed = time.monotonic()
    run = prefect.wait(run_id, timeout=120)
    failed_after = time.monotonic() - killed
    message = run["state"]["message"]
    assert run["state"]["type"] == "FAILED", run["state"]
    assert failed_after < 60, f"the run failed {failed_after:.0f}s after the tracking server died"
    assert f"MLflow tracking server {stack.mlflow} is unreachable" in message, message
    assert "\n" not in message
    assert published(workspace) == index_before  # no new index version, current unchanged
    results = list((workspace / "training").glob("*/train_result.json"))
    trained = {path: path.stat().st_mtime_ns for path in results}

    status = stack_cli(stack.dir, "status", timeout=60)
    assert status.returncode == 1
    assert "mlflow" in status.stdout and "stale" in status.stdout and "`up` restarts them" in status.stdout
    up = stack_cli(stack.dir, "up", env=stack.env)
    assert up.returncode == 0, up.stdout + up.stderr
    assert "mlflow from an earlier `up` is not running: restarting it" in up.stdout
    after = {service: record["pid"] for service, record in state_of(stack)["services"].items()}
    assert {s for s in before if before[s] != after[s]} == {"mlflow"}  # only the dead one was restarted
    assert state_of(stack)["ports"]["mlflow"] == stack.state["ports"]["mlflow"]  # on its port: the same URI

    # Production and the index were untouched by the failed run.
    assert str(client.get_model_version_by_alias(name, "production").version) == production
    rerun = prefect.wait(prefect.start("retrain", long))
    assert rerun["state"]["type"] == "COMPLETED", rerun["state"]
    # The training the failed run finished is reused, not redone: its result file is the one the re-run read.
    assert len(trained) == 2  # the short run's and the long run's
    assert {path: path.stat().st_mtime_ns for path in results} == trained
    assert len(list((workspace / "training").glob("*/train_result.json"))) == 2
    failed_runs = client.search_runs(
        [client.get_experiment_by_name(name).experiment_id], "attributes.status != 'FINISHED'"
    )
    assert all(item.info.status != "FINISHED" for item in failed_runs)  # the failed run never reads FINISHED
    print(f"\nMLflow killed: run FAILED {failed_after:.0f}s later: {message}")


def test_prefect_server_restarted_while_a_worker_runs_a_retrain(
    stack, prefect, tmp_path, tiny_beir_dir, tiny_model_dir
):
    name = "prefect-restarted"
    config = tiny_config(tmp_path, tiny_beir_dir, tiny_model_dir, name, **LONG_TRAINING)
    workspace = Path(config["workspace"])
    run_id = prefect.start("retrain", config)
    prefect.wait_task(run_id, "train")
    workers = {name: record["pid"] for name, record in state_of(stack)["services"].items() if "worker" in name}
    kill_service(stack, "prefect", signal.SIGTERM)
    down_at = time.monotonic()
    up = stack_cli(stack.dir, "up", env=stack.env)
    assert up.returncode == 0, up.stdout + up.stderr
    outage = time.monotonic() - down_at
    # `up` restarted the server only: restarting the workers would have killed the run in flight.
    assert {name: state_of(stack)["services"][name]["pid"] for name in workers} == workers
    run = prefect.wait(run_id)
    state = run["state"]["type"]
    client = registry(stack)
    moves = history(stack, name)
    # What the project guarantees whatever Prefect made of the outage: at most one production move, and every
    # published version complete (its checksums verify) with `current` on one of them.
    assert len(moves) <= 1
    current, versions = published(workspace)
    for version in versions:
        from denseflow.model.index.store import load_version

        load_version(workspace / "indexes" / "default" / version, verify=True)
    if state == "COMPLETED":
        assert [move["action"] for move in moves] == ["gate"]
        production = str(client.get_model_version_by_alias(name, "production").version)
        assert index_label(workspace) == f"{name}@{production}" and current == versions[-1]
    # The workers came through the outage: a new run is picked up and completes.
    after = prefect.wait(prefect.start("retrain", tiny_config(tmp_path, tiny_beir_dir, tiny_model_dir, name)))
    assert after["state"]["type"] == "COMPLETED", after["state"]
    assert len(history(stack, name)) <= 1 + len(moves)
    print(f"\nPrefect server down {outage:.0f}s during training: the run ended {state} ({run['state']['message']})")


def test_a_one_minute_interval_deployment_fires_and_completes(stack, prefect, tmp_path, tiny_beir_dir, tiny_model_dir):
    name = "every-minute"
    spec = yaml.safe_load((REPO / "deploy" / "prefect.yaml").read_text())
    (entry,) = [item for item in spec["deployments"] if item["name"] == "retrain"]
    entry = entry | {
        "name": name,
        "schedules": [{"interval": 60, "active": True}],
        "parameters": {"config": tiny_config(tmp_path, tiny_beir_dir, tiny_model_dir, name)},
    }
    deployed = time.monotonic()
    deploy_file(stack.dir, stack.cli_env, spec | {"deployments": [entry]}, name)
    deployment = prefect.deployment(name)
    try:
        body = {"deployments": {"id": {"any_": [deployment["id"]]}}}
        deadline = time.monotonic() + 300
        done = None
        while time.monotonic() < deadline and done is None:
            runs = prefect.http.post("/flow_runs/filter", json=body).json()
            started = sorted(
                (r for r in runs if r["state"]["type"] != "SCHEDULED"), key=lambda r: r["start_time"] or ""
            )
            if started and started[0]["state"]["type"] in TERMINAL:
                done = started[0]
            time.sleep(2)
        assert done is not None, f"no scheduled run finished within 300s: {[r['state']['type'] for r in runs]}"
        fired_after = time.monotonic() - deployed
    finally:
        prefect.http.delete(f"/deployments/{deployment['id']}")  # no further runs
    assert done["state"]["type"] == "COMPLETED", done["state"]
    assert done["auto_scheduled"], "the run was not created by the scheduler"
    # The scheduled run is the one that registered production (the base model's version, on an empty registry).
    client = registry(stack)
    production = client.get_model_version_by_alias(name, "production")
    assert client.get_run(production.run_id).data.tags["prefect.flow_run_id"] == done["id"]
    print(f"\none-minute schedule: first run finished {fired_after:.0f}s after `prefect deploy`")


def test_wrong_database_credentials_are_one_line_in_seconds(stack):
    urls = stack.module.urls(stack.state)
    wrong = urls["mlflow_store"].replace(stack.state["password"], "not-the-password")
    started = time.monotonic()
    done = subprocess.run(
        [str(BIN / "denseflow"), "models", "list"],
        env=stack.cli_env | {"MLFLOW_TRACKING_URI": wrong},
        capture_output=True,
        text=True,
        timeout=120,
    )
    seconds = time.monotonic() - started
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert "password authentication failed" in done.stderr and "not-the-password" not in done.stderr
    assert seconds < 20, f"{seconds:.0f}s"


def secrets_of(stack) -> list[str]:
    """Every secret the stack holds: the database password, both MLflow passwords, Prefect's auth string and its
    password part, the basic-auth app's Flask key, and the search replicas' API key once there is one."""
    state = state_of(stack)
    credentials = state["credentials"]
    found = [state["password"], *credentials.values(), credentials["prefect_auth_string"].partition(":")[2]]
    key = stack.dir / "search.key"
    return found + ([key.read_text().strip()] if key.is_file() else [])


def leaks(texts: dict[str, str], secrets: list[str]) -> dict[str, list[str]]:
    """Where each secret shows up (by the secret's first 4 characters, so a failure prints no secret)."""
    found = {where: [secret[:4] + "…" for secret in secrets if secret in text] for where, text in texts.items()}
    return {where: hits for where, hits in found.items() if hits}


@pytest.fixture(scope="module")
def auth_model(stack, prefect, tmp_path_factory, tiny_model_dir) -> SimpleNamespace:
    """One retrain through the deployment, as the admin: a registered model with production and another version."""
    from tests.conftest import write_tiny_beir

    tmp = tmp_path_factory.mktemp("auth")
    name = "auth"
    beir = write_tiny_beir(tmp / "tiny-beir")
    config = tiny_config(tmp, beir, tiny_model_dir, name)
    run_id = prefect.start("retrain", config)
    run = prefect.wait(run_id)
    assert run["state"]["type"] == "COMPLETED", run["state"]
    client = registry(stack)
    production = str(client.get_model_version_by_alias(name, "production").version)
    versions = sorted(str(item.version) for item in client.search_model_versions(f"name = '{name}'"))
    other = next(version for version in versions if version != production)  # the candidate (α 0: base ships)
    return SimpleNamespace(
        name=name,
        production=production,
        other=other,
        flow_run=run_id,
        workspace=Path(config["workspace"]),
        beir=beir,
        history=history(stack, name),
    )


def denseflow_cli(stack, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "denseflow"), *args], env=env, capture_output=True, text=True, timeout=120, cwd=REPO
    )


def production_of(stack, name: str) -> str:
    return str(registry(stack).get_model_version_by_alias(name, "production").version)


def test_without_or_with_wrong_credentials_mlflow_and_prefect_refuse(stack, prefect, auth_model):
    name = auth_model.name
    wrong = "not-the-password-0123"
    # MLflow: a read, an alias move (production to the other version) and a create, without credentials, with a
    # wrong password for each user, and as a user that does not exist: 401, and the answer echoes nothing.
    mlflow_calls = [
        ("GET", "/api/2.0/mlflow/registered-models/get", {"params": {"name": name}}),
        (
            "POST",
            "/api/2.0/mlflow/registered-models/alias",
            {"json": {"name": name, "alias": "production", "version": auth_model.other}},
        ),
        ("POST", "/api/2.0/mlflow/experiments/create", {"json": {"name": "intruder"}}),
    ]
    for auth in (None, ("admin", wrong), ("reader", wrong), ("intruder", wrong)):
        for method, path, kwargs in mlflow_calls:
            response = httpx.request(method, stack.mlflow + path, auth=auth, timeout=30, **kwargs)
            assert response.status_code == 401, (auth and auth[0], path, response.status_code, response.text)
            assert wrong not in response.text
    assert httpx.get(f"{stack.mlflow}/health", timeout=30).status_code == 200  # health stays open (probes)

    # Prefect: read the deployments, start a run, cancel a finished one; the MLflow admin's password is no Prefect
    # credential either.
    deployment_id = prefect.deployment("retrain")["id"]
    count = prefect.http.post("/flow_runs/count", json={}).json()
    prefect_calls = [
        ("/deployments/filter", {}),
        (f"/deployments/{deployment_id}/create_flow_run", {"parameters": {}}),
        (f"/flow_runs/{auth_model.flow_run}/set_state", {"state": {"type": "CANCELLING"}, "force": True}),
    ]
    admin_password = stack.credentials["mlflow_admin_password"]
    for auth in (None, ("denseflow", wrong), ("admin", admin_password)):
        for path, body in prefect_calls:
            response = httpx.post(stack.api + path, json=body, auth=auth, timeout=30)
            assert response.status_code == 401, (auth and auth[0], path, response.status_code, response.text)
            assert wrong not in response.text and admin_password not in response.text
    assert prefect.http.post("/flow_runs/count", json={}).json() == count  # no run was started
    assert prefect.run(auth_model.flow_run)["state"]["type"] == "COMPLETED"
    assert httpx.get(f"{stack.api}/health", timeout=30).status_code == 200

    # `production` through the project's command: with a wrong password, and with none.
    anonymous = {
        k: v for k, v in stack.cli_env.items() if k not in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    }
    promote = ["promote", auth_model.other, "--name", name, "--workspace", str(auth_model.workspace), "--alias-only"]
    for env in (stack.cli_env | {"MLFLOW_TRACKING_PASSWORD": wrong}, anonymous):
        done = denseflow_cli(stack, *promote, "--reason", "intruder", env=env)
        assert done.returncode != 0, done.stdout
        assert "401" in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert wrong not in done.stderr + done.stdout
    assert production_of(stack, name) == auth_model.production
    assert history(stack, name) == auth_model.history
    print(f"\nrefused without credentials: {done.stderr.strip().splitlines()[-1]}")


def test_the_read_only_user_pulls_a_version_but_cannot_promote_it(stack, auth_model, tmp_path, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    name = auth_model.name
    reader = stack.module.credential_env(state_of(stack), "reader")
    assert reader["MLFLOW_TRACKING_USERNAME"] == "reader" and "PREFECT_API_AUTH_STRING" not in reader
    reader_file = (stack.dir / "reader.env").read_text()
    assert f"MLFLOW_TRACKING_PASSWORD={reader['MLFLOW_TRACKING_PASSWORD']}" in reader_file
    assert "PREFECT" not in reader_file  # a replica gets no Prefect credential
    for key, value in reader.items():
        monkeypatch.setenv(key, value)

    # Pull, as a replica does: resolve the alias, download the version's model and its run's artifacts.
    client = MlflowClient(tracking_uri=stack.mlflow, registry_uri=stack.mlflow)
    version = client.get_model_version_by_alias(name, "production")
    assert str(version.version) == auth_model.production
    # MLflow resolves models:/ through the process-wide registry URI (not download_artifacts' own argument), which an
    # earlier test in this process may have pointed at a local store.
    previous_registry = mlflow.get_registry_uri()
    mlflow.set_registry_uri(stack.mlflow)
    try:
        model_dir = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{name}@production", dst_path=str(tmp_path / "model"), tracking_uri=stack.mlflow
            )
        )
    finally:
        mlflow.set_registry_uri(previous_registry)
    assert any(path.is_file() for path in model_dir.rglob("*"))
    run_dir = Path(
        mlflow.artifacts.download_artifacts(
            run_id=version.run_id, dst_path=str(tmp_path / "run"), tracking_uri=stack.mlflow
        )
    )  # the run's artifacts (what it logged beside the version), through the server's artifact proxy
    assert any(path.is_file() for path in run_dir.rglob("*"))

    # Promote: every write that would move production, or change what it serves, is refused with 403.
    auth = (reader["MLFLOW_TRACKING_USERNAME"], reader["MLFLOW_TRACKING_PASSWORD"])
    artifacts = client.get_run(version.run_id).info.artifact_uri.removeprefix("mlflow-artifacts:/")
    writes = [
        ("POST", "registered-models/alias", {"name": name, "alias": "production", "version": auth_model.other}),
        ("DELETE", "registered-models/alias", {"name": name, "alias": "production"}),
        ("POST", "model-versions/create", {"name": name, "source": version.source, "run_id": version.run_id}),
        ("POST", "registered-models/set-tag", {"name": name, "key": "denseflow.production_history", "value": "[]"}),
        ("POST", "model-versions/set-tag", {"name": name, "version": version.version, "key": "k", "value": "v"}),
    ]
    for method, path, body in writes:
        response = httpx.request(method, f"{stack.mlflow}/api/2.0/mlflow/{path}", json=body, auth=auth, timeout=30)
        assert response.status_code == 403, (path, response.status_code, response.text)
    tamper = httpx.put(
        f"{stack.mlflow}/api/2.0/mlflow-artifacts/artifacts/{artifacts}/tampered.txt", content=b"x", auth=auth
    )
    assert tamper.status_code == 403, tamper.text
    done = denseflow_cli(
        stack,
        *("promote", auth_model.other, "--name", name, "--workspace", str(auth_model.workspace), "--alias-only"),
        env=stack.cli_env | reader,
    )
    assert done.returncode != 0, done.stdout
    assert "403" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert reader["MLFLOW_TRACKING_PASSWORD"] not in done.stderr + done.stdout
    assert production_of(stack, name) == auth_model.production
    assert history(stack, name) == auth_model.history
    print(f"\nread-only user promoting: {done.stderr.strip().splitlines()[-1]}")


# --- search replicas: `stack.py replicas`, serving auth@production from the registry as the read-only user ---------

REPLICAS = ("replica-1", "replica-2")


def test_replicas_are_not_started_for_a_reference_the_registry_does_not_have(stack, auth_model):
    """No model of that name (the basic-auth app answers the reader 403), or no such alias on one (400): one line,
    exit 1, nothing started, and `status` names the replica as not started without calling the stack broken."""
    for reference, status_code in (("no-such-model@production", 403), (f"{auth_model.name}@staging", 400)):
        done = stack_cli(stack.dir, "replicas", "--replicas", "1", "--model", reference, timeout=120)
        assert done.returncode == 1, done.stdout + done.stderr
        assert (
            f"search replicas not started: the registry has no {reference} yet (MLflow answered {status_code} to "
            "reader)" in done.stdout
        ), done.stdout
        assert not [name for name in state_of(stack)["services"] if name.startswith("replica-")]
    status = stack_cli(stack.dir, "status", "--json", timeout=60)
    services = json.loads(status.stdout)["services"]
    assert services["replica-1"].startswith("not started: the registry has no"), services
    assert status.returncode == 0, status.stdout + status.stderr


def search(url: str, query: str, key: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{url}/search", json={"query": query, "k": 5}, headers=headers, timeout=60)


@pytest.fixture(scope="module")
def replicas(stack, auth_model, tmp_path_factory) -> SimpleNamespace:
    """Two replicas of auth@production started by `stack.py replicas` (the reader's environment, a cache each, the
    API key, polling every second), while `denseflow publish` logs an index for the other version as the admin, so
    production can move to a version a replica can serve. Stopped by the last replica case (`--replicas 0`)."""
    name, other = auth_model.name, auth_model.other
    log = tmp_path_factory.mktemp("replicas") / "publish.log"
    with log.open("w") as out:  # a file, not a pipe: nobody reads a pipe while the replicas start
        publish = subprocess.Popen(
            [str(BIN / "denseflow"), "publish", "--model", f"{name}/{other}", "--workspace", str(auth_model.workspace)]
            + ["--data", str(auth_model.beir)],
            env=stack.cli_env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        started = time.monotonic()
        done = stack_cli(
            stack.dir,
            *("replicas", "--replicas", "2", "--model", f"{name}@production", "--poll-seconds", "1"),
            timeout=UP_TIMEOUT,
        )
        start_seconds = time.monotonic() - started
        publish.wait(timeout=RUN_TIMEOUT)
    finally:
        if publish.poll() is None:
            publish.kill()
    assert done.returncode == 0, done.stdout + done.stderr
    assert publish.returncode == 0, log.read_text()[-3000:]
    state = state_of(stack)
    key = (stack.dir / "search.key").read_text().strip()
    queries = [json.loads(line)["text"] for line in (auth_model.beir / "queries.jsonl").read_text().splitlines()]
    return SimpleNamespace(
        command=done,
        start_seconds=start_seconds,
        state=state,
        urls={replica: f"http://127.0.0.1:{state['ports'][replica]}" for replica in REPLICAS},
        key=key,
        queries=queries[::9][:4],
    )


def health_of(url: str) -> dict:
    return httpx.get(f"{url}/health", timeout=30).json()


def test_two_replicas_serve_production_from_the_registry_behind_the_key(stack, auth_model, replicas):
    out = replicas.command.stdout
    key = replicas.key
    assert len(key) == 64 and (stack.dir / "search.key").stat().st_mode & 0o777 == 0o600
    for replica, url in replicas.urls.items():
        assert f"{url} ({replica})" in out, out
        health = health_of(url)  # open without the key
        assert health["registry"]["served_version"] == auth_model.production, health
        assert health["model"] == auth_model.name and str(health["model_version"]) == auth_model.production
        assert health["stale"] is False and health["status"] == "ok", health
        assert search(url, replicas.queries[0], None).status_code == 401
        assert search(url, replicas.queries[0], "not-the-key-0123456789").status_code == 401
        assert httpx.get(f"{url}/metrics", timeout=30).status_code == 401
        # Each replica pulled the version into its own cache, as a second machine would.
        cache = stack.dir / "replicas" / replica.removeprefix("replica-") / "cache" / auth_model.name
        assert (cache / auth_model.production / "indexes" / "default").is_dir()
        # It runs as the read-only user, with no admin or Prefect credential in its environment.
        pid = replicas.state["services"][replica]["pid"]
        environ = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
        env = dict(item.split("=", 1) for item in environ if "=" in item)
        assert env["MLFLOW_TRACKING_USERNAME"] == "reader" and env["MLFLOW_TRACKING_URI"] == stack.mlflow
        assert "PREFECT_API_AUTH_STRING" not in env
        assert stack.credentials["mlflow_admin_password"] not in "\0".join(environ)
    # Both answer every query with the same documents and scores, from production's index version.
    index_versions = {health_of(url)["index_version"] for url in replicas.urls.values()}
    assert len(index_versions) == 1, index_versions
    for query in replicas.queries:
        answers = [search(url, query, key) for url in replicas.urls.values()]
        assert [answer.status_code for answer in answers] == [200, 200], [answer.text for answer in answers]
        bodies = [answer.json() for answer in answers]
        assert bodies[0]["hits"], bodies[0]
        hits = [[(hit["doc_id"], round(hit["score"], 5)) for hit in body["hits"]] for body in bodies]
        assert hits[0] == hits[1], (query, hits)
        assert {body["index_version"] for body in bodies} == index_versions
    status = stack_cli(stack.dir, "status", "--json", timeout=60)
    shown = json.loads(status.stdout)
    assert shown["replicas"] == replicas.urls
    for replica in REPLICAS:
        condition = shown["services"][replica]
        assert condition.startswith("running") and f"{auth_model.name}@production: version" in condition, condition
    print(f"\ntwo replicas started and serving in {replicas.start_seconds:.0f}s (with a publication beside them)")


def test_replicas_swap_when_production_moves(stack, auth_model, replicas):
    name, other = auth_model.name, auth_model.other
    client = registry(stack)
    assert client.get_model_version(name, other).tags.get("index.default"), "the other version has no index"
    # Moved by hand as the admin, as the MLflow UI would: replicas follow the alias, whoever moves it.
    client.set_registered_model_alias(name, "production", other)
    moved = time.monotonic()
    swapped: dict[str, float] = {}
    deadline = moved + 90
    while time.monotonic() < deadline and len(swapped) < len(REPLICAS):
        for replica, url in replicas.urls.items():
            if replica not in swapped and health_of(url)["registry"]["served_version"] == other:
                swapped[replica] = time.monotonic() - moved
        time.sleep(0.2)
    assert set(swapped) == set(REPLICAS), f"not swapped within 90 s: {swapped}"
    headers = {"Authorization": f"Bearer {replicas.key}"}
    for url in replicas.urls.values():
        health = health_of(url)
        assert str(health["model_version"]) == other and health["registry"]["alias_version"] == other, health
        answer = search(url, replicas.queries[0], replicas.key)
        assert answer.status_code == 200 and answer.json()["index_version"] == health["index_version"]
        metrics = httpx.get(f"{url}/metrics", headers=headers, timeout=30)
        assert metrics.status_code == 200
        served = [line for line in metrics.text.splitlines() if line.startswith("denseflow_served_info{")]
        assert len(served) == 1 and f'model_version="{other}"' in served[0], served
        assert f'index_version="{health["index_version"]}"' in served[0], served
        assert "denseflow_registry_stale 0.0" in metrics.text
        assert 'denseflow_search_requests_total{mode="' in metrics.text
    # Within a few 1-second polls each: the download, its checks and the load of the new version included.
    assert max(swapped.values()) < 30, swapped
    print(f"\nalias moved: replicas serving version {other} after " + ", ".join(f"{s:.1f}s" for s in swapped.values()))


# --- replicas as second machines: started by the test itself (`denseflow serve --model`, the reader, a cache of its
# own, loopback), beside the stack's two; the cases that need the stack's two run before they are stopped ----------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def served_key(body: dict) -> tuple[str, str]:
    """What an answer (or `denseflow search --json`) says it came from: the model version and the index version."""
    return body["model"], body["index_version"]


def hits_of(body: dict) -> list[tuple[str, float]]:
    return [(hit["doc_id"], hit["score"]) for hit in body["hits"]]


def same_hits(found: list[tuple[str, float]], wanted: list[tuple[str, float]]) -> bool:
    """The same documents in the same order, each score the same to 5 decimals."""
    return [doc for doc, _ in found] == [doc for doc, _ in wanted] and all(
        abs(score - other) <= 1e-5 for (_, score), (_, other) in zip(found, wanted, strict=True)
    )


def cached_versions(home: Path) -> list[str]:
    """The whole versions in a replica's cache of one model (``<version>/indexes/<index>/<index version>``)."""
    return sorted(path.parent.relative_to(home).as_posix() for path in home.glob("*/indexes/*/*/manifest.json"))


def replica_log(replica: SimpleNamespace) -> str:
    return replica.log.read_text(errors="replace")


def wait_health(url: str, check, timeout: float, what: str) -> tuple[dict, float]:  # noqa: ANN001 - dict -> bool
    """``url``'s /health once ``check`` holds on it, and the seconds that took; an AssertionError after ``timeout``."""
    started = time.monotonic()
    health: dict | None = None
    while time.monotonic() < started + timeout:
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
            health = health_of(url)
            if check(health):
                return health, time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"{url}: not {what} within {timeout:.0f}s; last /health: {health}")


def stop_own_replica(replica: SimpleNamespace) -> None:
    """SIGTERM to the replica's process group, SIGKILL after 30 s; nothing when it has already exited."""
    if replica.process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(replica.process.pid, signal.SIGTERM)
    try:
        replica.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(replica.process.pid, signal.SIGKILL)
        replica.process.wait(timeout=30)


@contextlib.contextmanager
def own_replica(
    stack, folder: Path, reference: str, cache: Path, tracking: str | None = None, wait: bool = True
) -> Iterator[SimpleNamespace]:
    """``denseflow serve --model reference`` as `stack.py replicas` starts one (the read-only user's environment only,
    an API key file, loopback, polls every second), on ``cache`` and a free port, its output in a log under
    ``folder``; until ``/health`` answers when ``wait``. Stopped at the end, whatever happened. ``tracking``: a
    tracking URI other than the stack's MLflow server (a proxy in front of it)."""
    module = stack.module
    state = state_of(stack)
    layout = module.Stack(stack.dir)
    key_file = folder / "search.key"
    if not key_file.is_file():
        key_file.write_text(os.urandom(32).hex() + "\n")
        key_file.chmod(0o600)
    env = module.process_env(layout, state) | module.role_env(layout, state, "reader")
    env.pop("PREFECT_HOME", None)
    env["DENSEFLOW_HOME"] = str(folder / "home")
    if tracking:
        env["MLFLOW_TRACKING_URI"] = tracking
    port = free_port()
    command = [str(BIN / "denseflow"), "serve", "--model", reference, "--cache-dir", str(cache)]
    command += ["--api-key-file", str(key_file), "--host", "127.0.0.1", "--port", str(port), "--poll-seconds", "1"]
    log = folder / f"replica-{port}.log"
    with log.open("ab") as out:  # a file, not a pipe: nobody reads a pipe while it runs
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=REPO,
            start_new_session=True,  # its own process group: stopped (or killed) whole
        )
    replica = SimpleNamespace(
        process=process, url=f"http://127.0.0.1:{port}", log=log, cache=cache, key=key_file.read_text().strip()
    )
    try:
        if wait:
            deadline = time.monotonic() + UP_TIMEOUT
            while True:
                assert process.poll() is None, f"replica exited ({process.returncode}):\n{replica_log(replica)[-3000:]}"
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{replica.url}/health", timeout=10).status_code == 200:
                        break
                assert time.monotonic() < deadline, f"replica not answering:\n{replica_log(replica)[-3000:]}"
                time.sleep(0.5)
        yield replica
    finally:
        stop_own_replica(replica)


def test_a_replica_on_an_empty_cache_answers_as_denseflow_search_on_the_publishing_workspace(
    stack, auth_model, replicas, tmp_path
):
    """A second machine's replica (the tracking server and the read-only user, nothing shared) gives the answers
    `denseflow search` gives on the workspace that published the version: the same ids, scores to 5 decimals."""
    name, workspace = auth_model.name, auth_model.workspace
    client = registry(stack)
    # The publishing machine's `current` serves production (after the swap case it does; moved there otherwise).
    version = index_label(workspace).rpartition("@")[2]
    if production_of(stack, name) != version:
        client.set_registered_model_alias(name, "production", version)
    index_version = client.get_model_version(name, version).tags["index.default"]
    expected = {}
    for query in replicas.queries:
        done = denseflow_cli(
            stack, "search", "--workspace", str(workspace), "--json", "-k", "5", query, env=stack.cli_env
        )
        assert done.returncode == 0, done.stdout + done.stderr
        expected[query] = json.loads(done.stdout[done.stdout.index("{") :])
        assert served_key(expected[query]) == (f"{name}@{version}", index_version), expected[query]
        assert expected[query]["hits"], expected[query]
    cache = tmp_path / "cache"
    assert not cache.exists()
    with own_replica(stack, tmp_path, f"{name}@production", cache) as replica:
        health = health_of(replica.url)
        assert health["registry"]["served_version"] == version and health["index_version"] == index_version, health
        assert health["stale"] is False and health["status"] == "ok", health
        for query in replicas.queries:
            answer = search(replica.url, query, replica.key)
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert served_key(body) == served_key(expected[query])
            assert same_hits(hits_of(body), hits_of(expected[query])), (query, hits_of(body), hits_of(expected[query]))
        home = cache / name
        assert cached_versions(home) == [f"{version}/indexes/default/{index_version}"]
        assert not list(home.glob(".partial-*"))
    print(f"\nreplica on an empty cache: {len(replicas.queries)} queries as `denseflow search` answers them")


def test_replicas_answer_from_one_whole_version_while_production_moves_under_load(stack, auth_model, replicas):
    """`denseflow promote` moves production while 8 threads query both replicas without pause: every answer is 200
    and wholly from the version it names (its hits are that version's for the query), and both replicas serve the
    new version within a bound (printed)."""
    name = auth_model.name
    before = production_of(stack, name)
    after = auth_model.other if before == auth_model.production else auth_model.production
    urls = list(replicas.urls.values())
    for url in urls:
        wait_health(url, lambda h: h["registry"]["served_version"] == before and not h["stale"], 90, f"on {before}")

    def snapshot() -> tuple[tuple[str, str], dict[str, list[tuple[str, float]]]]:
        """The one version both replicas serve now, and its hits for each query (the two agree)."""
        keys, found = set(), {}
        for query in replicas.queries:
            answers = [search(url, query, replicas.key) for url in urls]
            assert [answer.status_code for answer in answers] == [200, 200], [answer.text for answer in answers]
            bodies = [answer.json() for answer in answers]
            keys |= {served_key(body) for body in bodies}
            assert same_hits(hits_of(bodies[0]), hits_of(bodies[1])), (query, bodies)
            found[query] = hits_of(bodies[0])
        assert len(keys) == 1, keys
        return keys.pop(), found

    old_key, old_hits = snapshot()
    answers: list[tuple[str, str, int, tuple[str, str] | None, object]] = []
    errors: list[str] = []
    stop = threading.Event()
    deadline = time.monotonic() + 240  # the threads' own bound, whatever happens below

    def query_loop(worker: int) -> None:
        with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {replicas.key}"}) as http:
            turn = worker
            while not stop.is_set() and time.monotonic() < deadline:
                url, query = urls[turn % 2], replicas.queries[turn // 2 % len(replicas.queries)]
                turn += 1
                try:
                    response = http.post(f"{url}/search", json={"query": query, "k": 5})
                except httpx.HTTPError as err:
                    errors.append(f"{url}: {type(err).__name__}: {err}")
                    continue
                if response.status_code == 200:
                    body = response.json()
                    answers.append((url, query, 200, served_key(body), hits_of(body)))
                else:
                    answers.append((url, query, response.status_code, None, response.text[:300]))

    threads = [threading.Thread(target=query_loop, args=(worker,), daemon=True) for worker in range(8)]
    moved_at: float | None = None  # when this process first saw the alias on the new version
    swapped_at: dict[str, float] = {}
    for thread in threads:
        thread.start()
    try:
        time.sleep(1)  # the old version answers under load first
        started = time.monotonic()
        promote = subprocess.Popen(
            [str(BIN / "denseflow"), "promote", after, "--name", name, "--workspace", str(auth_model.workspace)]
            + ["--reason", "replicas under load"],
            env=stack.cli_env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            # The alias and both replicas watched together, every 0.1 s: the move is seen within a poll of this loop.
            watch_until = time.monotonic() + 180
            while time.monotonic() < watch_until and len(swapped_at) < len(urls):
                if moved_at is None:
                    with contextlib.suppress(Exception):  # a registry call that fails is retried next turn
                        if production_of(stack, name) == after:
                            moved_at = time.monotonic()
                    if moved_at is None and promote.poll() not in (None, 0):
                        break  # the command failed: said below
                for url in urls:
                    with contextlib.suppress(httpx.HTTPError):
                        if url not in swapped_at and health_of(url)["registry"]["served_version"] == after:
                            swapped_at[url] = time.monotonic()
                if moved_at is None and swapped_at:  # a registry call failed just then: the alias moved by now
                    moved_at = min(swapped_at.values())
                time.sleep(0.1)
            out, err = promote.communicate(timeout=120)
        finally:
            if promote.poll() is None:
                promote.kill()
                promote.communicate()
        assert promote.returncode == 0, out + err
        time.sleep(2)  # and the new version answers under load
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert moved_at is not None, "production never seen on the new version"
    swapped = {url: at - moved_at for url, at in swapped_at.items()}
    assert set(swapped) == set(urls), f"not both swapped within 180 s of `promote`: {swapped}"
    assert not [thread for thread in threads if thread.is_alive()]
    new_key, new_hits = snapshot()
    assert new_key[0] == f"{name}@{after}" and old_key[0] == f"{name}@{before}", (old_key, new_key)
    expected = {old_key: old_hits, new_key: new_hits}
    assert errors == [], errors[:5]
    refused = [answer for answer in answers if answer[2] != 200]
    assert refused == [], refused[:5]
    assert {answer[3] for answer in answers} <= set(expected), {answer[3] for answer in answers}
    mixed = [answer for answer in answers if not same_hits(answer[4], expected[answer[3]][answer[1]])]
    assert mixed == [], mixed[:3]
    for url in urls:  # each replica answered from both versions while it was queried
        assert {answer[3] for answer in answers if answer[0] == url} == set(expected), url
        health = health_of(url)
        assert health["registry"]["alias_version"] == after and health["status"] == "ok", health
    assert history(stack, name)[-1]["version"] == after and history(stack, name)[-1]["action"] == "promote"
    # Two 1-second polls and the fetch, checks and load of the new version, under 8 clients' load on the same cores.
    assert max(swapped.values()) < 45, swapped
    print(
        f"\n8 threads, {len(answers)} answers ({sum(a[3] == old_key for a in answers)} from version {before}, "
        f"{sum(a[3] == new_key for a in answers)} from {after}), no error; the alias moved "
        f"{moved_at - started:.1f}s into `denseflow promote`; both replicas on {after} after "
        + ", ".join(f"{seconds:.1f}s" for seconds in swapped.values())
    )


def test_replicas_answer_from_their_cache_while_mlflow_is_down_and_catch_up_after(stack, auth_model, replicas):
    """The stack's MLflow server killed (SIGKILL): both replicas keep answering from their cached version and say
    `stale: true`; `up` restarts the server (and only it), and the replicas are current again by themselves."""
    name = auth_model.name
    production = production_of(stack, name)
    headers = {"Authorization": f"Bearer {replicas.key}"}
    for url in replicas.urls.values():
        wait_health(url, lambda h: h["registry"]["served_version"] == production and not h["stale"], 90, "current")
    keys = {}  # what each replica answers from before the outage
    for replica, url in replicas.urls.items():
        keys[replica] = served_key(search(url, replicas.queries[0], replicas.key).json())
    pids = {replica: state_of(stack)["services"][replica]["pid"] for replica in REPLICAS}
    stale_after: dict[str, float] = {}
    try:
        kill_service(stack, "mlflow")
        killed = time.monotonic()
        for replica, url in replicas.urls.items():
            # A poll gives up after MLflow's HTTP retries (3, backoff 1: seconds), then the replica says so.
            health, _ = wait_health(url, lambda h: h["stale"] is True, 120, "stale")
            stale_after[replica] = time.monotonic() - killed
            assert health["registry"]["served_version"] == production, health
            assert "did not answer" in (health["registry"]["last_error"] or ""), health
            for query in replicas.queries:
                answer = search(url, query, replicas.key)
                assert answer.status_code == 200, answer.text
                assert served_key(answer.json()) == keys[replica]
            metrics = httpx.get(f"{url}/metrics", headers=headers, timeout=30)
            assert metrics.status_code == 200 and "denseflow_registry_stale 1.0" in metrics.text
    finally:
        up = stack_cli(stack.dir, "up", env=stack.env)  # the server back, whatever happened above
    assert up.returncode == 0, up.stdout + up.stderr
    assert "mlflow from an earlier `up` is not running: restarting it" in up.stdout
    restarted = time.monotonic()
    # The replicas came through the outage on their own: `up` did not restart them.
    assert {replica: state_of(stack)["services"][replica]["pid"] for replica in REPLICAS} == pids
    caught_up = {}
    for replica, url in replicas.urls.items():
        health, _ = wait_health(
            url,
            lambda h: (
                not h["stale"] and h["registry"]["alias_version"] == production and not h["registry"]["last_error"]
            ),
            90,
            "caught up",
        )
        caught_up[replica] = time.monotonic() - restarted
        assert health["registry"]["served_version"] == production and health["status"] == "ok", health
        assert served_key(search(url, replicas.queries[0], replicas.key).json()) == keys[replica]
    print(
        "\nMLflow killed: replicas stale after "
        + ", ".join(f"{seconds:.0f}s" for seconds in stale_after.values())
        + ", answering from cache throughout; after `up`, current again after "
        + ", ".join(f"{seconds:.1f}s" for seconds in caught_up.values())
    )


def test_a_replica_refuses_a_version_tampered_in_the_artifact_store_and_keeps_serving(
    stack, auth_model, replicas, tmp_path
):
    """One file of the other version's logged index changed in the stack's artifact store (the S3 stand-in), then
    production moved there: a replica that must download it refuses it by the file's name, in /health and its log,
    and keeps answering from the version it served. The file and production are put back afterwards."""
    name = auth_model.name
    client = registry(stack)
    served = production_of(stack, name)
    tampered = auth_model.other if served == auth_model.production else auth_model.production
    version = client.get_model_version(name, tampered)
    index_version = version.tags["index.default"]
    # The run's mlflow-artifacts:/<experiment>/<run>/artifacts, as the server keeps it under --artifacts-destination.
    logged = f"{version.run_id}/artifacts/indexes/default/{index_version}/doc_ids.json"
    found = list((stack.dir / "artifacts").glob(f"**/{logged}"))
    assert len(found) == 1, f"{logged} not (once) in the stack's artifact store: {found}"
    stored = found[0]
    original = stored.read_bytes()
    cache = tmp_path / "cache"
    with own_replica(stack, tmp_path, f"{name}@production", cache) as replica:
        before = health_of(replica.url)
        assert before["registry"]["served_version"] == served, before
        key = (f"{name}@{served}", before["index_version"])
        try:
            stored.write_bytes(original + b"\n")  # still valid JSON; its sha256 no longer the manifest's
            client.set_registered_model_alias(name, "production", tampered)
            health, seconds = wait_health(
                replica.url,
                lambda h: (
                    h["registry"]["alias_version"] == tampered and "doc_ids.json" in (h["registry"]["last_error"] or "")
                ),
                90,
                f"refusing version {tampered}",
            )
            error = health["registry"]["last_error"]
            assert error.startswith(f"refused {name} version {tampered}") and "doc_ids.json: sha256 differs" in error
            assert health["registry"]["served_version"] == served and health["index_version"] == key[1], health
            assert health["status"] == "degraded" and health["stale"] is False, health
            for query in replicas.queries:
                answer = search(replica.url, query, replica.key)
                assert answer.status_code == 200, answer.text
                assert served_key(answer.json()) == key
            named = [line for line in replica_log(replica).splitlines() if "refused" in line and "doc_ids.json" in line]
            assert named, replica_log(replica)[-3000:]
            home = cache / name
            assert cached_versions(home) == [f"{served}/indexes/default/{key[1]}"]  # nothing of it kept
            assert not list(home.glob(".partial-*"))
        finally:
            stored.write_bytes(original)
            client.set_registered_model_alias(name, "production", served)
        # Production back: the replica agrees with the registry again.
        wait_health(replica.url, lambda h: h["registry"]["alias_version"] == served and h["status"] == "ok", 60, "ok")
    print(f"\ntampered version {tampered} refused {seconds:.1f}s after the alias move: {named[0][-200:]}")


HOP_HEADERS = {"host", "connection", "keep-alive", "content-length", "transfer-encoding", "accept-encoding", "te"}


class HeldArtifacts(http.server.BaseHTTPRequestHandler):
    """A loopback proxy to the stack's MLflow server that holds every artifact request (``/api/2.0/mlflow-artifacts/``)
    until ``release`` is set, and sets ``held`` when the first one comes: a replica's download caught in the middle,
    every time (the replica code has no hook to slow it). Subclassed per test with its own events and upstream."""

    upstream = ""
    held = threading.Event()
    release = threading.Event()

    def log_message(self, *args: object) -> None:
        pass

    def forward(self) -> None:
        if self.path.startswith("/api/2.0/mlflow-artifacts/"):
            self.held.set()
            self.release.wait(300)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {key: value for key, value in self.headers.items() if key.lower() not in HOP_HEADERS}
        try:
            answer = httpx.request(self.command, self.upstream + self.path, headers=headers, content=body, timeout=60)
            payload = answer.content
            self.send_response(answer.status_code)
            for key, value in answer.headers.items():
                if key.lower() not in HOP_HEADERS | {"content-encoding", "date", "server"}:
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (httpx.HTTPError, OSError):
            pass  # the replica was killed meanwhile: nobody to answer

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = forward  # noqa: N815 - http.server's names


def test_a_replica_killed_mid_download_restarts_on_its_cache_and_never_loads_half_a_version(
    stack, auth_model, replicas, tmp_path
):
    """A replica on an empty cache, its download held in the middle (a proxy in front of MLflow), killed with
    SIGKILL: only the scratch folder is left, never a version folder. Restarted on the same cache (straight to
    MLflow), it clears the scratch folder, downloads production again and serves it, and every file of the version it
    serves matches the manifest."""
    from denseflow.model.index.store import checksum_problems, read_manifest

    name = auth_model.name
    production = production_of(stack, name)
    cache = tmp_path / "cache"
    home = cache / name
    proxy = type(
        "Held", (HeldArtifacts,), {"upstream": stack.mlflow, "held": threading.Event(), "release": threading.Event()}
    )
    with fake_http_server(proxy) as port:
        try:
            with own_replica(
                stack, tmp_path, f"{name}@production", cache, tracking=f"http://127.0.0.1:{port}", wait=False
            ) as killed:
                deadline = time.monotonic() + UP_TIMEOUT
                while not proxy.held.wait(0.2):
                    assert killed.process.poll() is None, replica_log(killed)[-3000:]
                    assert time.monotonic() < deadline, "no download started:\n" + replica_log(killed)[-3000:]
                partials = list(home.glob(".partial-*"))
                assert partials and cached_versions(home) == [], (partials, cached_versions(home))
                os.killpg(killed.process.pid, signal.SIGKILL)
                killed.process.wait(timeout=30)
        finally:
            proxy.release.set()
    assert killed.process.returncode == -signal.SIGKILL
    # What kill -9 leaves: the scratch folder, never a version.
    assert list(home.glob(".partial-*")) and cached_versions(home) == []

    with own_replica(stack, tmp_path, f"{name}@production", cache) as replica:
        health = health_of(replica.url)
        assert health["registry"]["served_version"] == production and health["status"] == "ok", health
        assert not list(home.glob(".partial-*"))  # cleared at the start, never taken for a version
        (relative,) = cached_versions(home)
        assert relative == f"{production}/indexes/default/{health['index_version']}"
        folder = home / relative
        assert checksum_problems(folder, read_manifest(folder), absent_ok=("model",)) == []
        for query in replicas.queries:
            answer = search(replica.url, query, replica.key)
            assert answer.status_code == 200, answer.text
            assert served_key(answer.json()) == (f"{name}@{production}", health["index_version"])
    print(f"\nreplica killed mid-download ({len(partials)} scratch folder left); restarted, it serves {relative}")


def test_the_key_is_in_no_replica_log_and_replicas_stop_alone(stack, replicas):
    secrets = [replicas.key, *secrets_of(stack)]
    texts = {replica: (stack.dir / "logs" / f"{replica}.log").read_text(errors="replace") for replica in REPLICAS}
    assert all("/search" in text for text in texts.values())  # the access log is there, and the key is not
    texts["replicas"] = replicas.command.stdout + replicas.command.stderr
    assert not leaks(texts, secrets), leaks(texts, secrets)
    pids = [replicas.state["services"][replica]["pid"] for replica in REPLICAS]
    others = {name: record["pid"] for name, record in state_of(stack)["services"].items() if name not in REPLICAS}
    done = stack_cli(stack.dir, "replicas", "--replicas", "0", timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not [pid for pid in pids if stack.module.pid_alive(int(pid))]
    after = state_of(stack)["services"]
    assert not [name for name in after if name.startswith("replica-")]
    assert {name: record["pid"] for name, record in after.items()} == others  # nothing else was touched
    assert not leaks({"replicas --replicas 0": done.stdout + done.stderr}, secrets)


def test_no_credential_in_logs_params_or_error_messages(stack, prefect, auth_model):
    secrets = secrets_of(stack)
    texts = {str(path): path.read_text(errors="replace") for path in (stack.dir / "logs").glob("*.log")}
    assert {"mlflow.log", "prefect.log", "worker-1.log"} <= {Path(where).name for where in texts}
    texts["up"] = stack.up.stdout + stack.up.stderr
    status = stack_cli(stack.dir, "status", "--json", timeout=60)
    texts["status --json"] = status.stdout + status.stderr
    # The MLflow runs (params, tags) and versions the retrain wrote, and the Prefect flow run and its logs.
    client = registry(stack)
    experiment = client.get_experiment_by_name(auth_model.name)
    runs = client.search_runs([experiment.experiment_id])
    assert runs
    for run in runs:
        texts[f"run {run.info.run_id}"] = json.dumps({"params": run.data.params, "tags": run.data.tags})
    for version in client.search_model_versions(f"name = '{auth_model.name}'"):
        texts[f"version {version.version}"] = json.dumps({"tags": version.tags, "source": version.source})
    texts["flow run"] = json.dumps(prefect.run(auth_model.flow_run))
    body = {"logs": {"flow_run_id": {"any_": [auth_model.flow_run]}}, "limit": 200}
    logs = prefect.http.post("/logs/filter", json=body).json()
    assert logs
    texts["flow run logs"] = "\n".join(item["message"] for item in logs)
    # Refused calls that carried a real secret under a wrong name: the answers and the command's message.
    admin_password = stack.credentials["mlflow_admin_password"]
    refused = httpx.get(f"{stack.mlflow}/api/2.0/mlflow/users/current", auth=("intruder", admin_password))
    assert refused.status_code == 401
    texts["MLflow 401"] = refused.text + json.dumps(dict(refused.headers))
    prefect_password = stack.credentials["prefect_auth_string"].partition(":")[2]
    refused = httpx.post(f"{stack.api}/flow_runs/filter", json={}, auth=("intruder", prefect_password))
    assert refused.status_code == 401
    texts["Prefect 401"] = refused.text + json.dumps(dict(refused.headers))
    done = denseflow_cli(
        stack, "models", "list", "--name", auth_model.name, env=stack.cli_env | {"MLFLOW_TRACKING_USERNAME": "intruder"}
    )
    assert done.returncode != 0 and "401" in done.stderr, done.stdout + done.stderr
    texts["denseflow models list, refused"] = done.stdout + done.stderr
    assert not leaks(texts, secrets), leaks(texts, secrets)


def test_down_stops_every_process_and_keeps_the_data(stack):
    records = state_of(stack)["services"]
    models = sorted(item.name for item in registry(stack).search_registered_models())
    down = stack_cli(stack.dir, "down", timeout=180)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not [name for name, record in records.items() if stack.module.pid_alive(int(record["pid"]))]
    assert (stack.dir / "pg" / "PG_VERSION").is_file() and any((stack.dir / "artifacts").iterdir())
    status = stack_cli(stack.dir, "status", timeout=60)
    assert status.returncode == 1 and "stopped" in status.stdout
    # Up again on the same data: the registry kept every version.
    up = stack_cli(stack.dir, "up", env=stack.env)
    assert up.returncode == 0, up.stdout + up.stderr
    assert sorted(item.name for item in registry(stack).search_registered_models()) == models


def test_rotate_restarts_the_stack_on_new_credentials_and_the_old_ones_stop_working(stack):
    before = state_of(stack)
    old = before["credentials"]
    done = stack_cli(stack.dir, "rotate", env=stack.env)
    assert done.returncode == 0, done.stdout + done.stderr
    after = state_of(stack)
    new = after["credentials"]
    assert not set(old.values()) & set(new.values()) and after["password"] == before["password"]
    # Every process but PostgreSQL restarted on the new credentials, on its port: the same URIs.
    assert after["services"]["postgres"]["pid"] == before["services"]["postgres"]["pid"]
    restarted = {
        name for name in before["services"] if after["services"][name]["pid"] != before["services"][name]["pid"]
    }
    assert restarted == set(before["services"]) - {"postgres"}
    assert after["ports"] == before["ports"]
    assert not leaks({"rotate": done.stdout + done.stderr}, [*secrets_of(stack), *old.values()])

    current = f"{stack.mlflow}/api/2.0/mlflow/users/current"
    for user in ("admin", "reader"):
        assert httpx.get(current, auth=(user, old[f"mlflow_{user}_password"])).status_code == 401
        assert httpx.get(current, auth=(user, new[f"mlflow_{user}_password"])).status_code == 200
    for auth, wanted in ((old["prefect_auth_string"], 401), (new["prefect_auth_string"], 200)):
        assert Prefect(stack.api, auth).http.post("/flow_runs/count", json={}).status_code == wanted
    assert f"MLFLOW_TRACKING_PASSWORD={new['mlflow_admin_password']}" in (stack.dir / "admin.env").read_text()
    status = stack_cli(stack.dir, "status", "--json", timeout=60)
    services = json.loads(status.stdout)["services"]
    assert all(condition.startswith("running") for condition in services.values()), services  # workers ONLINE
    # What comes after this case (none in file order) would log in with the new credentials.
    admin = stack.module.credential_env(after, "admin")
    os.environ.update({key: admin[key] for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")})
    stack.cli_env.update(admin)
    stack.credentials.update(new)
