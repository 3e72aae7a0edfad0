"""MLflow wiring (tasks/tracking.py): the first runs on a fresh workspace create the store one at a time (issue 11
item 8)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

# Imports first (slow on a loaded machine), then wait for the go file so every process opens the store at once.
CONFIGURE = """
import sys, time
from pathlib import Path
from denseflow.model.config import TrackingConfig
from denseflow.tasks.tracking import configure_tracking
workspace, go = Path(sys.argv[1]), Path(sys.argv[2])
print("ready", flush=True)
while not go.exists():
    time.sleep(0.005)
configure_tracking(TrackingConfig(tracking_uri=f"sqlite:///{workspace / 'mlflow.db'}", experiment="race"), workspace)
print("configured", flush=True)
"""


def test_concurrent_first_runs_on_a_fresh_workspace_create_the_store_once(tmp_path: Path) -> None:
    """Without the workspace lock, MLflow's schema migrations race: 'table ... already exists' in all but one."""
    workspace, go = tmp_path / "ws", tmp_path / "go"
    workspace.mkdir()
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", CONFIGURE, str(workspace), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for process in processes:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
    go.touch()
    deadline = time.monotonic() + 300
    results = [process.communicate(timeout=max(1.0, deadline - time.monotonic())) for process in processes]
    failed = [err for (_, err), process in zip(results, processes, strict=True) if process.returncode]
    errors = [err.strip().splitlines()[-1] if err.strip() else "no output" for err in failed]
    assert errors == []
    assert [out.split() for out, _ in results] == [["configured"]] * 2
    experiments = MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}").search_experiments()
    assert [e.name for e in experiments if e.name == "race"] == ["race"]


def test_a_flow_run_can_be_traced_to_its_user_command_and_code(tmp_path: Path) -> None:
    """Runs were created without the context tags: the UI's Source and User were empty."""
    from types import SimpleNamespace

    from denseflow.model.config import TrackingConfig
    from denseflow.tasks.tracking import configure_tracking, start_tracking_run

    tracking = TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="trace")
    configure_tracking(tracking, tmp_path)
    run_id = start_tracking_run(SimpleNamespace(tracking=tracking, model_dump=dict), "flow-1")
    tags = MlflowClient(tracking.tracking_uri).get_run(run_id).data.tags
    assert tags["mlflow.user"]
    assert tags["mlflow.source.name"]
    assert tags["prefect.flow_run_id"] == "flow-1"
    checkout = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent)
    if checkout.returncode == 0:  # run from a checkout: the commit of the code that ran
        assert tags["mlflow.source.git.commit"] == checkout.stdout.strip()


def test_a_run_block_ends_finished_or_failed_and_reraises(tmp_path: Path) -> None:
    import pytest

    from denseflow.model.config import TrackingConfig
    from denseflow.tasks.tracking import configure_tracking, tracking_run

    tracking = TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="lifecycle")
    configure_tracking(tracking, tmp_path)
    client = MlflowClient(tracking.tracking_uri)
    experiment = client.get_experiment_by_name("lifecycle").experiment_id
    done, broken = (client.create_run(experiment).info.run_id for _ in range(2))

    with tracking_run(done):
        pass
    with pytest.raises(KeyboardInterrupt), tracking_run(broken):
        raise KeyboardInterrupt  # a Ctrl-C mid-run too

    assert client.get_run(done).info.status == "FINISHED"
    assert client.get_run(broken).info.status == "FAILED"


def test_the_tracking_uri_is_the_configured_one_then_the_environment_then_the_workspace(
    tmp_path: Path, monkeypatch
) -> None:
    from denseflow.model.workspace import tracking_uri

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert tracking_uri("sqlite:///configured.db", tmp_path) == "sqlite:///configured.db"
    assert tracking_uri(None, tmp_path) == "http://tracking:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_tags_metric_histories_and_one_off_records_are_written_through_tracking(tmp_path: Path) -> None:
    from denseflow.model.config import TrackingConfig
    from denseflow.tasks.tracking import (
        configure_tracking,
        end_tracking_run,
        log_artifact,
        log_metric_history,
        set_tags,
        set_version_tags,
        start_record_run,
    )

    tracking = TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="writes")
    configure_tracking(tracking, tmp_path)
    client = MlflowClient(tracking.tracking_uri)
    run_id = start_record_run("records", "b vs a")
    set_tags(run_id, {"towers": "asymmetric", "dataset_fingerprint": "fp"})
    points = [(step, 1.0 / (step + 1)) for step in range(1001)]  # past one log_batch's 1000 metrics
    log_metric_history(run_id, "train.loss", points)
    folder = tmp_path / "report"
    folder.mkdir()
    (folder / "compare.md").write_text("# b vs a")
    log_artifact(run_id, folder, "reports")
    client.create_registered_model("retriever")
    version = client.create_model_version("retriever", str(folder), run_id=run_id).version
    set_version_tags("retriever", version, {"index.default": "v0003", "eval_split": "test"})
    end_tracking_run(run_id)

    run = client.get_run(run_id)
    assert client.get_experiment(run.info.experiment_id).name == "records"
    assert run.info.status == "FINISHED"
    assert (run.data.tags["towers"], run.data.tags["dataset_fingerprint"]) == ("asymmetric", "fp")
    history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "train.loss"))
    assert history == points
    assert [item.path for item in client.list_artifacts(run_id, "reports")] == ["reports/compare.md"]
    tags = client.get_model_version("retriever", version).tags
    assert (tags["index.default"], tags["eval_split"]) == ("v0003", "test")
