"""Real servers on loopback: a Prefect server serving the retrain deployment, and an MLflow tracking server.

Each server is started here on a free port and stopped here; nothing outside the test's temporary folders
is touched (PREFECT_HOME, the MLflow store and the workspace all live in tmp). These tests start several
Python processes that import torch, Prefect and MLflow, so they take minutes on a loaded 2-core machine;
``pytest -m "not servers"`` leaves them out.
"""

from __future__ import annotations

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
import mlflow
import pytest
import yaml

pytestmark = pytest.mark.servers

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
START_TIMEOUT = 180  # seconds; server start-up on a loaded 2-core machine, imports included
RUN_TIMEOUT = 420


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Process:
    """A child process in its own session, logging to a file; stopped (with its children) by its own id."""

    def __init__(self, command: list[str], log: Path, env: dict[str, str], stop_signal: int = signal.SIGINT) -> None:
        self.log = log
        self.stop_signal = stop_signal
        self._out = log.open("wb")
        self.popen = subprocess.Popen(
            command, stdout=self._out, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True
        )

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def wait_http(self, url: str, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise AssertionError(f"process exited with {self.popen.returncode}:\n{self.tail()}")
            try:
                if httpx.get(url, timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise AssertionError(f"{url} not up after {timeout}s:\n{self.tail()}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, self.stop_signal)
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(10)
        self._out.close()


def fast_dir(fallback: Path) -> Path:
    """SQLite stores on tmpfs when there is one: every API call commits, and an fsync per commit adds up."""
    return Path(tempfile.mkdtemp(dir="/dev/shm")) if Path("/dev/shm").is_dir() else fallback


def base_env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "DENSEFLOW_HOME", "PREFECT_PROFILE"):
        env.pop(key, None)
    env |= {
        "PREFECT_HOME": str(tmp / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": str(START_TIMEOUT),
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # no GenAI job workers: 8 fewer processes per server
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",  # schedule.py picks a triggered run up within 2 s, not 10
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    return env


def tiny_retrain_yaml(folder: Path, beir_dir: Path, model_dir: Path, experiment: str, publish: bool) -> Path:
    """The tiny retrain of tests/flows/test_retrain.py; the store comes from the environment. α 0 makes the trained
    model the base model itself, so the gate's outcome is fixed: the base model ships as version 2."""
    config = {
        "workspace": str(folder / "ws"),
        "run_name": f"{experiment}-run",
        "data": {"path": str(beir_dir)},
        "mining": {"strategy": "bm25", "rank_start": 0, "rank_end": 10},
        "train": {
            "base_model": str(model_dir),
            "batch_size": 8,
            "epochs": 1,
            "max_seq_length": 32,
            "interpolation": 0.0,
        },  # fmt: skip
        "eval": {"batch_size": 16},
        "tracking": {"experiment": experiment},
        "promotion": {"publish_on_promotion": publish},
    }
    path = folder / f"{experiment}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """A Prefect server, an MLflow tracking server and ``denseflow ui``, started side by side (start-up is
    mostly imports, so overlapping them saves most of a minute) and stopped at the end of the module."""
    tmp = tmp_path_factory.mktemp("servers")
    stores = fast_dir(tmp)
    env = base_env(tmp)
    prefect_port, mlflow_port, ui_port = free_port(), free_port(), free_port()
    prefect_env = env | {"PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{stores / 'prefect.db'}"}
    mlflow_command = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(mlflow_port)]
    mlflow_command += ["--workers", "1", "--backend-store-uri", f"sqlite:///{stores / 'server.db'}"]
    mlflow_command += ["--artifacts-destination", str(tmp / "server-artifacts")]
    ui_workspace = tmp / "ui-ws"
    from denseflow.model.config import TrackingConfig
    from denseflow.tasks.tracking import configure_tracking

    configure_tracking(
        TrackingConfig(tracking_uri=f"sqlite:///{ui_workspace / 'mlflow.db'}", experiment="in-ui"), ui_workspace
    )
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)

    started = time.monotonic()
    processes = {
        "prefect": Process(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port), "--no-ui"],
            tmp / "prefect-server.log",
            prefect_env,
        ),
        "mlflow": Process(mlflow_command, tmp / "mlflow-server.log", env, stop_signal=signal.SIGTERM),
        "ui": Process(
            [str(BIN / "denseflow"), "ui", "--workspace", str(ui_workspace), "--port", str(ui_port)],
            tmp / "ui.log",
            env,
            stop_signal=signal.SIGTERM,
        ),
    }
    api = f"http://127.0.0.1:{prefect_port}/api"
    try:
        processes["prefect"].wait_http(f"{api}/health")
        processes["mlflow"].wait_http(f"http://127.0.0.1:{mlflow_port}/health")
        processes["ui"].wait_http(f"http://127.0.0.1:{ui_port}/health")
        yield SimpleNamespace(
            api=api,
            env=prefect_env | {"PREFECT_API_URL": api},
            stores=stores,
            mlflow_url=f"http://127.0.0.1:{mlflow_port}",
            artifacts=tmp / "server-artifacts",
            ui=processes["ui"],
            ui_url=f"http://127.0.0.1:{ui_port}",
            start_s=time.monotonic() - started,
        )
    finally:
        for process in processes.values():
            process.stop()
        if stores != tmp:
            shutil.rmtree(stores, ignore_errors=True)


def run_cli(command: list[str], env: dict[str, str], timeout: float = START_TIMEOUT) -> str:
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_served_deployment_runs_retrain_and_registers_a_version(servers, tmp_path, tiny_beir_dir, tiny_model_dir):
    api = servers.api
    store = f"sqlite:///{servers.stores / 'served-mlflow.db'}"
    env = servers.env | {"MLFLOW_TRACKING_URI": store}
    config = tiny_retrain_yaml(tmp_path, tiny_beir_dir, tiny_model_dir, "served", publish=False)

    serve_started = time.monotonic()
    serve = Process([sys.executable, "deploy/schedule.py", "--config", str(config)], tmp_path / "serve.log", env)
    try:
        # The deployment exists once schedule.py has registered it with our parameters.
        deadline = time.monotonic() + START_TIMEOUT
        deployment = None
        while time.monotonic() < deadline and deployment is None:
            assert serve.popen.poll() is None, serve.tail()
            response = httpx.get(f"{api}/deployments/name/retrain/retrain", timeout=10)
            # test_prefect_yaml_deploys_to_the_server registers the same name with prefect.yaml's parameters;
            # in either order, the deployment is schedule.py's once it carries our configuration.
            found = response.json() if response.status_code == 200 else {}
            if (found.get("parameters") or {}).get("config", {}).get("data", {}).get("path") == str(tiny_beir_dir):
                deployment = found
            else:
                time.sleep(2)
        assert deployment is not None, f"deployment not registered:\n{serve.tail()}"
        registered_s = time.monotonic() - serve_started
        assert deployment["parameters"]["config"]["data"]["path"] == str(tiny_beir_dir)
        assert [item["schedule"]["cron"] for item in deployment["schedules"]] == ["0 3 * * 1"]
        limit = deployment.get("global_concurrency_limit") or {}
        assert limit.get("limit") == 1 or deployment.get("concurrency_limit") == 1

        started = time.monotonic()
        output = run_cli(
            [str(BIN / "prefect"), "deployment", "run", "retrain/retrain", "--watch", "--watch-timeout", "400"],
            env,
            timeout=RUN_TIMEOUT,
        )
        run_seconds = time.monotonic() - started
        assert "finished successfully" in output, output
    finally:
        serve.stop()

    runs = httpx.post(
        f"{api}/flow_runs/filter", json={"deployments": {"id": {"any_": [deployment["id"]]}}}, timeout=10
    ).json()
    # The weekly schedule has already queued future runs; the one triggered by hand is the only one that ran.
    runs = [run for run in runs if run["state"]["type"] != "SCHEDULED"]
    assert [run["state"]["type"] for run in runs] == ["COMPLETED"]
    artifacts = httpx.post(
        f"{api}/artifacts/filter",
        json={"artifacts": {"key": {"any_": ["retrain-summary"]}}, "flow_runs": {"id": {"any_": [runs[0]["id"]]}}},
        timeout=10,
    ).json()
    (summary,) = artifacts
    assert "## promotion gate: **base model shipped**" in summary["data"]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store, registry_uri=store)  # not the process-wide registry URI
    production = client.get_model_version_by_alias("retriever", "production")
    assert str(production.version) == "2" and production.tags["promotion.decision"] == "base model shipped"
    assert production.tags["denseflow.base_model"] == "true"
    run = client.get_run(production.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["prefect.flow_run_id"] == runs[0]["id"]
    assert f"MLflow run `{run.info.run_id}`" in summary["data"]
    print(
        f"\nservers up in {servers.start_s:.0f}s; schedule.py registered the deployment in "
        f"{registered_s:.0f}s; `prefect deployment run --watch` to completion {run_seconds:.0f}s"
    )


def test_prefect_yaml_deploys_to_the_server(servers):
    """The worker path's registration step (``prefect deploy``) against the real server; no worker is run."""
    env = servers.env
    prefect = str(BIN / "prefect")
    run_cli([prefect, "work-pool", "create", "denseflow", "--type", "process", "--overwrite"], env)
    run_cli([prefect, "--no-prompt", "deploy", "--prefect-file", "deploy/prefect.yaml", "--all"], env)
    deployment = httpx.get(f"{servers.api}/deployments/name/retrain/retrain", timeout=10).json()
    assert deployment["work_pool_name"] == "denseflow" and deployment["entrypoint"] == "flows/retrain.py:retrain"
    assert [item["schedule"]["cron"] for item in deployment["schedules"]] == ["0 3 * * 1"]
    limit = deployment.get("global_concurrency_limit") or {}
    assert limit.get("limit") == 1 or deployment.get("concurrency_limit") == 1
    assert deployment["parameters"]["config"]["promotion"]["metric"] == "ndcg@10"
    pull = json.dumps(deployment["pull_steps"])
    assert "set_working_directory" in pull and str(REPO) in pull


def test_retrain_against_mlflow_server_reads_back_over_rest(servers, tmp_path, tiny_beir_dir, tiny_model_dir):
    """A tiny retrain in this process, with Prefect on the server above and MLflow on its tracking server."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from denseflow.flows.retrain import retrain
    from denseflow.model.config import RetrainConfig

    url = servers.mlflow_url
    config = yaml.safe_load(tiny_retrain_yaml(tmp_path, tiny_beir_dir, tiny_model_dir, "remote", True).read_text())
    config["tracking"]["tracking_uri"] = url
    try:
        with temporary_settings({PREFECT_API_URL: servers.api}):
            summary = retrain(RetrainConfig.model_validate(config))
            # Send this run's logs and events while the server is up: left queued, they would be
            # retried against the stopped server when the suite's harness drains them (70 s).
            APILogWorker.drain_all()
            EventsWorker.drain_all()
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    assert summary["promotion"]["decision"] == "base model shipped" and summary["published"]["documents"] == 36

    rest = httpx.Client(base_url=f"{url}/api/2.0/mlflow", timeout=30)
    experiment = rest.get("/experiments/get-by-name", params={"experiment_name": "remote"}).json()["experiment"]
    (run,) = rest.post("/runs/search", json={"experiment_ids": [experiment["experiment_id"]]}).json()["runs"]
    run_id = run["info"]["run_id"]
    assert run["info"]["status"] == "FINISHED" and run["info"]["run_name"] == "remote-run"
    params = {item["key"]: item["value"] for item in run["data"]["params"]}
    assert params["train.batch_size"] == "8" and params["promotion.metric"] == "ndcg@10"
    metrics = {item["key"]: item["value"] for item in run["data"]["metrics"]}
    assert 0.0 <= metrics["ndcg_at_10"] <= 1.0 and metrics["recall_at_100"] == 1.0
    history = rest.get("/metrics/get-history", params={"run_id": run_id, "metric_key": "ndcg_at_10"}).json()
    assert [point["value"] for point in history["metrics"]] == [metrics["ndcg_at_10"]]
    tags = {item["key"]: item["value"] for item in run["data"]["tags"]}
    assert tags["promotion.decision"] == "base model shipped"

    version = rest.get("/registered-models/alias", params={"name": "retriever", "alias": "production"}).json()
    version = version["model_version"]
    assert version["version"] == "2" and version["run_id"] == run_id
    version_tags = {item["key"]: item["value"] for item in version["tags"]}
    # The base model's version carries its served mode's figures (hybrid: 6 dev queries are too few to choose on,
    # so the prior) and the dense model's own beside them.
    assert version_tags["served.mode"] == "hybrid"
    assert version_tags["ndcg_at_10"] == f"{metrics['zeroshot_bm25.ndcg_at_10']:.6f}"
    assert version_tags["trained.ndcg_at_10"] == f"{metrics['zeroshot.ndcg_at_10']:.6f}"
    assert version_tags["promotion.decision"] == "base model shipped"
    candidate = rest.get("/registered-models/alias", params={"name": "retriever", "alias": "candidate"}).json()
    candidate_tags = {item["key"]: item["value"] for item in candidate["model_version"]["tags"]}
    assert candidate_tags["promotion.production_version"] == "none"
    model = rest.get("/registered-models/get", params={"name": "retriever"}).json()["registered_model"]
    assert {alias["alias"] for alias in model["aliases"]} == {"candidate", "production"}
    history_tag = {item["key"]: item["value"] for item in model["tags"]}["denseflow.production_history"]
    assert json.loads(history_tag)[0]["version"] == "2"

    listed = rest.get("/artifacts/list", params={"run_id": run_id}).json()["files"]
    assert {"train_examples.jsonl", "evaluation", "plots", "promotion.json"} <= {item["path"] for item in listed}
    plots = rest.get("/artifacts/list", params={"run_id": run_id, "path": "plots"}).json()["files"]
    assert "plots/recall_at_k.png" in {item["path"] for item in plots}
    promotion = httpx.get(f"{url}/get-artifact", params={"path": "promotion.json", "run_uuid": run_id}, timeout=30)
    assert json.loads(promotion.text)["decision"] == "base model shipped"
    # The server stored the files itself (proxied artifacts): the client wrote nothing outside its workspace.
    assert list(servers.artifacts.rglob("promotion.json"))
    # Promotion published the index with the promoted version (publish_index against the same server).
    manifests = list((tmp_path / "ws" / "indexes").rglob("manifest.json"))
    assert len(manifests) == 1
    model = json.loads(manifests[0].read_text())["model"]
    assert (model["name"], model["version"], model["run_id"]) == ("retriever", "2", run_id)


def test_denseflow_ui_serves_the_workspace_store(servers):
    assert "MLflow UI on sqlite:///" in servers.ui.tail() and servers.ui_url in servers.ui.tail()
    found = httpx.post(f"{servers.ui_url}/api/2.0/mlflow/experiments/search", json={"max_results": 10}, timeout=10)
    assert "in-ui" in {item["name"] for item in found.json()["experiments"]}


def test_schedule_deploys_the_users_validated_config_in_one_command(servers, tmp_path, tiny_beir_dir):
    """It took four Prefect commands and a YAML edit, and the weekly run trained on the bundled sample."""
    env = servers.env
    denseflow = str(BIN / "denseflow")
    config = tmp_path / "my.yaml"
    config.write_text(f"data:\n  path: {tiny_beir_dir}\ntrain:\n  max_steps: 4\n")
    run_cli([str(BIN / "prefect"), "work-pool", "create", "denseflow", "--type", "process", "--overwrite"], env)
    out = run_cli([denseflow, "schedule", "--config", str(config), "--cron", "0 3 * * 1", "--name", "weekly"], env)
    assert "retrain/weekly deployed" in out
    deployment = httpx.get(f"{servers.api}/deployments/name/retrain/weekly", timeout=10).json()
    assert [item["schedule"]["cron"] for item in deployment["schedules"]] == ["0 3 * * 1"]
    assert deployment["parameters"]["config"]["data"]["path"] == str(tiny_beir_dir)
    assert deployment["parameters"]["config"]["train"]["max_steps"] == 4
    assert deployment["work_pool_name"] == "denseflow"

    run_cli([denseflow, "schedule", "--config", str(config), "--every", "1d", "--name", "weekly"], env)  # an update
    deployment = httpx.get(f"{servers.api}/deployments/name/retrain/weekly", timeout=10).json()
    assert [item["schedule"]["interval"] for item in deployment["schedules"]] == [86400.0]
    run_cli([denseflow, "schedule", "--pause", "--name", "weekly"], env)
    assert httpx.get(f"{servers.api}/deployments/name/retrain/weekly", timeout=10).json()["paused"] is True
    listed = json.loads(run_cli([denseflow, "schedule", "--list"], env))
    assert {"name": "retrain/weekly", "paused": True, "data": str(tiny_beir_dir)}.items() <= next(
        row for row in listed if row["name"] == "retrain/weekly"
    ).items()

    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  learning_rat: 1e-4\n")
    refused = subprocess.run(
        [denseflow, "schedule", "--config", str(bad), "--cron", "0 3 * * 1", "--name", "bad"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=START_TIMEOUT,
    )  # fmt: skip
    assert refused.returncode == 2 and "nothing deployed" in refused.stderr and refused.stderr.count("\n") == 1
    assert httpx.get(f"{servers.api}/deployments/name/retrain/bad", timeout=10).status_code == 404


def test_schedule_without_a_server_says_how_to_start_one_and_deploys_nothing(tmp_path, tiny_beir_dir):
    env = {key: value for key, value in base_env(tmp_path).items() if key != "PREFECT_API_URL"}
    done = subprocess.run(
        [str(BIN / "denseflow"), "schedule", "--set", f"data.path={tiny_beir_dir}", "--cron", "0 3 * * 1"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=START_TIMEOUT,
    )  # fmt: skip
    assert done.returncode == 2
    assert "make stack" in done.stderr and "nothing deployed" in done.stderr
