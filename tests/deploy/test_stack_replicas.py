"""The stack's search replicas without starting a server: what each replica is started with (the read-only user's
environment, its own cache, the key's file and never the key), how the registry is asked whether there is anything
to serve, and how `down`, `replicas --replicas 0` and `rotate` treat them (part of ``make test``; the replicas
serving for real are in tests/deploy/test_stack.py)."""

from __future__ import annotations

import base64
import http.server
import json
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator

import pytest

from tests.deploy.conftest import STACK, fake_http_server, load_stack_module
from tests.deploy.test_stack_credentials import mode, stack_state


class FakeRegistry(http.server.BaseHTTPRequestHandler):
    """MLflow's model-version lookups as the basic-auth app answers the read-only user: 403 for a model that does
    not exist, 400 for an alias that does not, and the version with its tags otherwise."""

    reader = ""
    versions = {
        ("auth", "production"): {"version": "3", "tags": [{"key": "index.default", "value": "v0001"}]},
        ("auth", "candidate"): {"version": "4", "tags": [{"key": "other", "value": "x"}]},
    }

    def log_message(self, *args: object) -> None:
        pass

    def reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        url = urllib.parse.urlparse(self.path)
        query = {key: values[0] for key, values in urllib.parse.parse_qs(url.query).items()}
        header = self.headers.get("Authorization", "")
        if base64.b64decode(header.removeprefix("Basic ")).decode() != self.reader:
            return self.reply(401, b"You are not authenticated.")
        if query.get("name") != "auth":
            return self.reply(403, b"Permission denied")
        if url.path.endswith("/registered-models/alias"):
            found = self.versions.get(("auth", query.get("alias")))
        else:
            found = next((v for v in self.versions.values() if v["version"] == query.get("version")), None)
        if found is None:
            return self.reply(400, json.dumps({"error_code": "INVALID_PARAMETER_VALUE"}).encode())
        return self.reply(200, json.dumps({"model_version": found}).encode())


@pytest.fixture
def fake_registry() -> Iterator[int]:
    with fake_http_server(FakeRegistry) as port:
        yield port


def test_a_replica_runs_as_the_reader_with_its_own_cache_and_the_key_file_only(tmp_path, monkeypatch):
    stack = load_stack_module()
    folder = stack.Stack(tmp_path)
    state = stack_state(stack) | {"ports": {"postgres": 1, "mlflow": 2, "prefect": 3, "replica-2": 8081}}
    stack.set_replicas(state, 2, "auth@production", 1.0)
    key = stack.read_search_key(folder, create=True)
    assert len(key) == 64 and mode(folder.search_key) == 0o600
    for name in ("MLFLOW_TRACKING_PASSWORD", "PREFECT_API_AUTH_STRING", "DENSEFLOW_HOME"):
        monkeypatch.setenv(name, "exported-by-the-user-0123")  # a shell that sourced admin.env
    started = {}

    def capture(stack_, name, command, env, marker, as_user=None):  # noqa: ANN001, ANN202
        started[name] = (command, env, marker)
        return {"pid": 0, "marker": marker, "log": "", "started_at": 0}

    monkeypatch.setattr(stack, "start_process", capture)
    stack.start_replica(folder, state, "replica-2")
    command, env, marker = started["replica-2"]
    credentials = state["credentials"]
    assert env["MLFLOW_TRACKING_USERNAME"] == "reader"
    assert env["MLFLOW_TRACKING_PASSWORD"] == credentials["mlflow_reader_password"]
    assert env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:2"
    assert env["DENSEFLOW_HOME"] == str(tmp_path / "replicas" / "2")
    assert "PREFECT_API_AUTH_STRING" not in env and "PREFECT_HOME" not in env
    assert credentials["mlflow_admin_password"] not in env.values()
    assert "exported-by-the-user-0123" not in env.values()
    cache = tmp_path / "replicas" / "2" / "cache"
    assert cache.is_dir() and marker == f"--cache-dir {cache}"

    def option(flag: str) -> str:
        return command[command.index(flag) + 1]

    assert command[1:4] == ["serve", "--model", "auth@production"]
    assert option("--cache-dir") == str(cache) and option("--api-key-file") == str(folder.search_key)
    assert (option("--host"), option("--port"), option("--poll-seconds")) == ("127.0.0.1", "8081", "1")
    secrets = [key, state["password"], *credentials.values()]
    assert not [secret for secret in secrets if secret in " ".join(command)]  # `ps` shows it to every user
    assert stack.scrub(f"echoed {key}") == "echoed ***"


def test_the_registry_is_asked_as_the_reader_whether_there_is_a_version_to_serve(tmp_path, fake_registry, monkeypatch):
    stack = load_stack_module()
    state = stack_state(stack) | {"ports": {"postgres": 1, "mlflow": fake_registry, "prefect": 3}}
    monkeypatch.setattr(FakeRegistry, "reader", f"reader:{state['credentials']['mlflow_reader_password']}")
    assert stack.served_version(state, "auth@production") == ("3", "")
    assert stack.served_version(state, "auth/3") == ("3", "")
    version, why = stack.served_version(state, "retriever@production")
    assert version is None and why == "the registry has no retriever@production yet (MLflow answered 403 to reader)"
    version, why = stack.served_version(state, "auth@staging")
    assert version is None and "answered 400" in why
    version, why = stack.served_version(state, "auth@candidate")
    assert version is None and why == "auth@candidate is version 4, which has no published index (no index.default tag)"
    monkeypatch.setattr(FakeRegistry, "reader", "reader:another-password")
    with pytest.raises(stack.StackError, match="looking auth@production up as reader: HTTP 401"):
        stack.served_version(state, "auth@production")
    for bad in ("retriever", "@production", "retriever/latest"):
        with pytest.raises(stack.StackError, match="give a registry reference"):
            stack.parse_reference(bad)


def test_replicas_wait_for_their_reference_and_status_says_so(tmp_path, fake_registry, monkeypatch, capsys):
    stack = load_stack_module()
    folder = stack.Stack(tmp_path)
    state = stack_state(stack) | {"ports": {"postgres": 1, "mlflow": fake_registry, "prefect": 3}}
    monkeypatch.setattr(FakeRegistry, "reader", f"reader:{state['credentials']['mlflow_reader_password']}")
    monkeypatch.setattr(stack, "start_process", lambda *args, **kwargs: pytest.fail("nothing should start"))
    stack.set_replicas(state, 2, "retriever@production")
    stack.ensure_replicas(folder, state)
    out = capsys.readouterr().out
    assert "search replicas not started: the registry has no retriever@production yet" in out
    recorded = json.loads(folder.state_path.read_text())
    assert recorded["replicas"]["count"] == 2 and "replica-1" not in recorded["ports"]
    _, conditions = stack.inspect(folder)
    assert conditions["replica-1"].startswith("not started: the registry has no retriever@production")
    assert conditions["mlflow"] == "stopped"


def test_down_and_replicas_0_stop_replicas_and_rotate_makes_a_new_key(tmp_path, capsys):
    stack = load_stack_module()
    folder = stack.Stack(tmp_path)
    state = stack_state(stack) | {"ports": {"postgres": 1, "mlflow": 2, "prefect": 3, "replica-1": 8080}}
    stack.set_replicas(state, 1, "auth@production")
    old_key = stack.read_search_key(folder, create=True)

    def sleeper(name: str) -> dict:
        return stack.start_process(folder, name, ["sleep", "120"], {"PATH": "/usr/bin:/bin"}, "sleep 120")

    state["services"] = {"replica-1": sleeper("replica-1")}
    folder.write(state)
    assert stack.main(["down", "--dir", str(tmp_path)]) == 0
    assert not stack.pid_alive(state["services"]["replica-1"]["pid"])
    assert "replica-1 stopped" in capsys.readouterr().out
    assert json.loads(folder.state_path.read_text())["replicas"]["count"] == 1  # the next `up` starts it again

    record = sleeper("replica-1")  # running, and no longer asked for
    state = json.loads(folder.state_path.read_text()) | {"services": {"replica-1": record}}
    stack.set_replicas(state, 0)
    stack.ensure_replicas(folder, state)
    assert not stack.pid_alive(record["pid"]) and state["services"] == {} and "replica-1" not in state["ports"]

    assert stack.main(["rotate", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    new_key = folder.search_key.read_text().strip()
    assert new_key != old_key and len(new_key) == 64 and mode(folder.search_key) == 0o600
    assert str(folder.search_key) in out and new_key not in out and old_key not in out


def test_bad_replica_settings_are_one_line_before_anything_starts(tmp_path):
    for args, message in (
        (["--replicas", "-1"], "--replicas -1: give 0 or more"),
        (["--model", "retriever"], "--model 'retriever': give a registry reference"),
        (["--poll-seconds", "0"], "--poll-seconds 0: give a positive number of seconds"),
    ):
        done = subprocess.run(
            [sys.executable, str(STACK), "up", "--dir", str(tmp_path / "stack"), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, done.stdout + done.stderr
        assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
    assert not (tmp_path / "stack").exists()  # nothing was started or recorded


class FakeReplica(http.server.BaseHTTPRequestHandler):
    """A replica's open ``/health``, serving auth version 3 and told the alias names 4, which it cannot serve."""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = {
            "status": "degraded",
            "index": "default",
            "index_version": "v0001",
            "stale": False,
            "registry": {"reference": "auth@production", "served_version": "3", "last_error": "no index.default tag"},
        }
        data = json.dumps(body).encode() if self.path == "/health" else b"{}"
        self.send_response(200 if self.path == "/health" else 401)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def test_status_asks_each_replica_what_it_serves_and_up_prints_where_they_answer(tmp_path, capsys):
    import os

    stack = load_stack_module()
    folder = stack.Stack(tmp_path)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeReplica)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        state = stack_state(stack) | {"ports": {"postgres": 1, "mlflow": 2, "prefect": 3, "replica-1": port}}
        stack.set_replicas(state, 1, "auth@production")
        # This process stands in for the replica: alive, and its command line holds the marker.
        state["services"] = {"replica-1": {"pid": os.getpid(), "marker": "pytest", "log": "", "started_at": 0}}
        folder.write(state)
        _, conditions = stack.inspect(folder)
    finally:
        server.shutdown()
        server.server_close()
    assert conditions["replica-1"] == (
        f"running (pid {os.getpid()}) http://127.0.0.1:{port} auth@production: version 3 (index default/v0001), "
        "degraded: no index.default tag"
    )
    stack.print_env(folder, state)
    out = capsys.readouterr().out
    assert f"search      http://127.0.0.1:{port} (replica-1;" in out
    assert f"Authorization: Bearer $(cat {folder.search_key})" in out
