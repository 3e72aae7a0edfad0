"""deploy/stack.py and the tracking-URI checks without starting servers: the answers a user gets when something is
missing, stale or wrong (part of ``make test``; tests/deploy/test_stack.py runs the real stack)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from tests.deploy.conftest import STACK, load_stack_module


def stack_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, str(STACK), *args], capture_output=True, text=True, timeout=60, env=os.environ | (env or {})
    )


def dead_pid() -> int:
    done = subprocess.Popen(["true"])
    done.wait()
    return done.pid


def test_missing_postgres_binaries_is_one_line_naming_the_package(tmp_path):
    done = stack_cli("up", "--dir", str(tmp_path / "stack"), env={"DENSEFLOW_PG_BIN": str(tmp_path)})
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "PostgreSQL server binaries" in done.stderr and "apt-get install postgresql-15" in done.stderr
    assert not (tmp_path / "stack" / "stack.json").exists()  # nothing was started or recorded


def test_status_of_an_empty_folder_says_how_to_start(tmp_path):
    done = stack_cli("status", "--dir", str(tmp_path))
    assert done.returncode == 3 and "nothing in" in done.stdout and "stack.py up" in done.stdout
    assert "nothing running" in stack_cli("down", "--dir", str(tmp_path)).stdout


def test_status_reports_stale_state_from_a_killed_up(tmp_path):
    stack = load_stack_module()
    state = {
        "password": "x",
        "workers": 1,
        "ports": {"postgres": 1, "mlflow": 2, "prefect": 3},
        "services": {"mlflow": {"pid": dead_pid(), "marker": "--port 2", "log": "l", "started_at": 0}},
    }
    stack.Stack(tmp_path).write(state)
    assert (tmp_path / "stack.json").stat().st_mode & 0o777 == 0o600  # it holds the database password
    done = stack_cli("status", "--dir", str(tmp_path))
    assert done.returncode == 1
    lines = dict(line.split(None, 1) for line in done.stdout.splitlines() if line and not line.startswith("stack:"))
    assert lines["mlflow"].startswith("stale (pid")
    assert lines["postgres"] == "stopped"
    assert "stale state from a stopped or killed `up` (mlflow)" in done.stdout


def test_a_reused_pid_is_not_taken_for_ours():
    stack = load_stack_module()
    import os

    assert not stack.is_ours({"pid": os.getpid(), "marker": "--name worker-that-is-not-this-process"})
    assert stack.is_ours({"pid": os.getpid(), "marker": "pytest"})  # this process, run by pytest
    assert not stack.is_ours({"pid": dead_pid(), "marker": ""})


def test_a_taken_port_moves_to_the_next_free_one_and_says_so(capsys):
    stack = load_stack_module()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        taken = sock.getsockname()[1]
        chosen = stack.pick_port("mlflow", taken, set())
    assert chosen > taken
    assert f"port {taken} is in use: mlflow on {chosen}" in capsys.readouterr().out


def test_database_tracking_uri_that_refuses_is_one_line_in_seconds():
    from denseflow.cli.main import UserError, check_tracking_reachable

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the block ends: nothing listens there
    started = time.monotonic()
    with pytest.raises(UserError) as caught:
        check_tracking_reachable(f"postgresql+psycopg2://denseflow:secret@127.0.0.1:{port}/mlflow")
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert "\n" not in message and "secret" not in message
    assert f"postgresql+psycopg2://denseflow:***@127.0.0.1:{port}/mlflow refused the connection" in message


def test_a_dead_tracking_server_is_named_in_one_line(monkeypatch):
    import mlflow

    from denseflow.tasks.tracking import TrackingServerUnreachable, end_tracking_run, log_metrics

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mlflow.set_tracking_uri(f"http://127.0.0.1:{port}")
    try:
        with pytest.raises(TrackingServerUnreachable) as caught:
            log_metrics("0123456789abcdef", {"ndcg@10": 0.5})
        assert (
            str(caught.value) == f"MLflow tracking server http://127.0.0.1:{port} is unreachable (connection refused)"
        )
        end_tracking_run("0123456789abcdef", "FAILED")  # a failing run's own error is the one raised, not this
        with pytest.raises(TrackingServerUnreachable):
            end_tracking_run("0123456789abcdef", "FINISHED")  # never silently "finished"
    finally:
        mlflow.set_tracking_uri(None)
