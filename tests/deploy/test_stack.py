"""The local stack for real: PostgreSQL, MLflow and Prefect servers, two process workers, deployment runs.

One stack for the module, started with ``deploy/stack.py up`` in a fresh folder and stopped with ``down``. Each
test has its own registered model, experiment and workspace (the flow's ``workspace`` setting), so the first run
of each test meets an empty registry on a shared server, as a new team's first runs would. The retrains use the
tiny random BERT and the 36-document dataset of tests/conftest.py, so a retrain takes seconds and the servers'
own behaviour is what is measured. ``make test-stack`` runs this module in file order (the overlap case first, on
a store nothing has written to; ``down`` last); ``make test`` leaves it out.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import yaml

from tests.conftest import REPO
from tests.deploy.conftest import STACK, load_stack_module

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
    env = os.environ | {"PREFECT_WORKER_QUERY_SECONDS": "2"}  # workers pick a run up within 2 s, not 10
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
            cli_env=os.environ
            | client_env
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


class Prefect:
    def __init__(self, api: str) -> None:
        self.http = httpx.Client(base_url=api, timeout=30)

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
    return Prefect(stack.api)


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
    status = stack_cli(stack.dir, "status", "--json", timeout=60)
    assert status.returncode == 0, status.stdout + status.stderr
    services = json.loads(status.stdout)["services"]
    assert set(services) == {"postgres", "mlflow", "prefect", "worker-1", "worker-2"}
    assert all(condition.startswith("running") for condition in services.values()), services
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
