"""The stack's credentials without starting a server: what is generated, where it is written (mode 600), what each
process gets, and that no secret reaches a command line, a log line or a message (part of ``make test``; the
servers' own refusals are in tests/deploy/test_stack.py)."""

from __future__ import annotations

import base64
import http.server
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests.deploy.conftest import fake_http_server, load_stack_module

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def load_users_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_mlflow_users", DEPLOY / "mlflow_users.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def stack_state(stack: ModuleType) -> dict:
    return {
        "password": "database-password-0123",
        "ports": {"postgres": 1, "mlflow": 2, "prefect": 3},
        "credentials": stack.new_credentials(),
    }


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_credentials_are_new_long_and_distinct():
    stack = load_stack_module()
    first, second = stack.new_credentials(), stack.new_credentials()
    assert set(first) == {"mlflow_admin_password", "mlflow_reader_password", "mlflow_secret_key", "prefect_auth_string"}
    assert all(len(value) >= 12 for value in first.values())  # MLflow's minimum for a password
    assert len(set(first.values())) == 4 and not set(first.values()) & set(second.values())
    user, _, password = first["prefect_auth_string"].partition(":")
    assert user == stack.PREFECT_USER and len(password) >= 24
    assert stack.fingerprint({"credentials": first}) != stack.fingerprint({"credentials": second})
    assert stack.fingerprint({"credentials": first}) == stack.fingerprint({"credentials": dict(first)})
    assert not any(value in stack.fingerprint({"credentials": first}) for value in first.values())


def test_state_and_env_files_are_private_and_source_into_a_shell(tmp_path):
    stack = load_stack_module()
    folder = stack.Stack(tmp_path)
    state = stack_state(stack)
    (tmp_path / "admin.env").write_text("old")
    (tmp_path / "admin.env").chmod(0o644)  # a file left readable by an older version: tightened on rewrite
    folder.write(state)
    stack.write_env_files(folder, state)
    assert mode(folder.state_path) == 0o600
    credentials = state["credentials"]
    for role, user in (("admin", "admin"), ("reader", "reader")):
        path = folder.env_file(role)
        assert mode(path) == 0o600
        shell = subprocess.run(
            ["bash", "-c", f'set -a; . "{path}"; set +a; env'],
            capture_output=True,
            text=True,
            env={"PATH": os.environ["PATH"]},
            check=True,
        )
        env = dict(line.split("=", 1) for line in shell.stdout.splitlines() if "=" in line)
        assert env["MLFLOW_TRACKING_USERNAME"] == user
        assert env["MLFLOW_TRACKING_PASSWORD"] == credentials[f"mlflow_{role}_password"]
        assert env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:2"
    admin = folder.env_file("admin").read_text()
    reader = folder.env_file("reader").read_text()
    assert f"PREFECT_API_AUTH_STRING={credentials['prefect_auth_string']}" in admin
    # A replica gets the registry only: no Prefect credential, no other user's password.
    assert "PREFECT" not in reader and credentials["mlflow_admin_password"] not in reader
    assert credentials["mlflow_reader_password"] not in admin


def test_each_process_gets_its_own_credentials_and_none_from_the_shell(tmp_path, monkeypatch):
    stack = load_stack_module()
    folder = stack.Stack(tmp_path)
    state = stack_state(stack)
    for key in ("MLFLOW_TRACKING_PASSWORD", "PREFECT_API_AUTH_STRING", "MLFLOW_AUTH_ADMIN_PASSWORD"):
        monkeypatch.setenv(key, "exported-by-the-user-0123")
    base = stack.process_env(folder, state)
    assert "exported-by-the-user-0123" not in base.values()
    worker = stack.worker_env(folder, state)
    assert worker["MLFLOW_TRACKING_USERNAME"] == "admin"
    assert worker["MLFLOW_TRACKING_PASSWORD"] == state["credentials"]["mlflow_admin_password"]
    assert worker["PREFECT_API_AUTH_STRING"] == state["credentials"]["prefect_auth_string"]

    started = {}

    def capture(stack_, name, command, env, marker, as_user=None):  # noqa: ANN001, ANN202
        started[name] = (command, env)
        return {"pid": 0, "marker": marker, "log": "", "started_at": 0}

    monkeypatch.setattr(stack, "start_process", capture)
    stack.start_mlflow(folder, state)
    stack.start_prefect(folder, state)
    command, env = started["mlflow"]
    assert command[command.index("--app-name") + 1] == "basic-auth"
    assert env["MLFLOW_BACKEND_STORE_URI"].endswith("/mlflow") and env["MLFLOW_AUTH_CONFIG_PATH"].endswith(".ini")
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == state["credentials"]["mlflow_secret_key"]
    assert "MLFLOW_TRACKING_PASSWORD" not in env  # a server holds no client credential
    command, env = started["prefect"]
    assert env["PREFECT_SERVER_API_AUTH_STRING"] == state["credentials"]["prefect_auth_string"]
    secrets = [state["password"], *state["credentials"].values()]
    for command, _ in started.values():  # `ps` shows a command line to every user of the machine
        assert not [secret for secret in secrets if secret in " ".join(command)]


def test_scrub_masks_known_secrets_and_url_passwords_only():
    stack = load_stack_module()
    state = stack_state(stack)
    stack.remember_secrets(state)
    auth = state["credentials"]["prefect_auth_string"]
    text = (
        f"refused {auth} and {state['credentials']['mlflow_reader_password']} at "
        "postgresql+psycopg2://denseflow:other-password@127.0.0.1:5432/mlflow; models:/retriever@production on "
        "http://127.0.0.1:5000/api/2.0/mlflow/registered-models/alias?name=x@y"
    )
    shown = stack.scrub(text)
    assert auth.partition(":")[2] not in shown and state["credentials"]["mlflow_reader_password"] not in shown
    assert "other-password" not in shown and "postgresql+psycopg2://denseflow:***@127.0.0.1:5432/mlflow" in shown
    assert "models:/retriever@production" in shown and "http://127.0.0.1:5000/api/2.0/" in shown
    assert "denseflow" in shown  # user names are not secrets


def test_a_message_with_a_secret_is_printed_masked(tmp_path, monkeypatch, capsys):
    stack = load_stack_module()
    folder = stack.Stack(tmp_path)
    state = stack_state(stack)
    folder.write(state)
    secret = state["credentials"]["mlflow_admin_password"]

    def failing(*_args: object) -> int:
        raise stack.StackError(f"something echoed {secret}")

    monkeypatch.setattr(stack, "cmd_status", failing)
    assert stack.main(["status", "--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert secret not in err and "something echoed ***" in err


def test_rotate_on_a_stopped_stack_writes_new_credentials_for_the_next_up(tmp_path, capsys):
    stack = load_stack_module()
    folder = stack.Stack(tmp_path)
    state = stack_state(stack)
    folder.write(state)
    assert stack.main(["rotate", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rotated = json.loads(folder.state_path.read_text())
    assert rotated["password"] == state["password"]  # the database keeps its password
    assert not set(rotated["credentials"].values()) & set(state["credentials"].values())
    assert "the next `up` starts it with them" in out
    assert not [secret for secret in rotated["credentials"].values() if secret in out]
    assert rotated["credentials"]["mlflow_admin_password"] in folder.env_file("admin").read_text()
    assert mode(folder.env_file("reader")) == 0o600


class FakeServers(http.server.BaseHTTPRequestHandler):
    """MLflow's and Prefect's answers as the stack sees them: health open, the rest behind basic auth."""

    accepted: set[str] = set()
    anonymous_ok = False

    def log_message(self, *args: object) -> None:
        pass

    def answer(self) -> None:
        if self.path in ("/health", "/api/health"):
            status, body = 200, b"OK"
        else:
            header = self.headers.get("Authorization", "")
            given = base64.b64decode(header.removeprefix("Basic ")).decode() if header else None
            ok = given in self.accepted or (given is None and self.anonymous_ok)
            body = b"[]" if self.path.endswith("/workers/filter") else b"0"
            status = 200 if ok else 401
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.answer()

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.answer()


@pytest.fixture
def fake_servers() -> Iterator[int]:
    with fake_http_server(FakeServers) as port:
        yield port


def test_checks_send_the_credentials_and_catch_a_server_without_auth(tmp_path, fake_servers, monkeypatch):
    stack = load_stack_module()
    folder = stack.Stack(tmp_path)
    state = stack_state(stack) | {"ports": {"postgres": 1, "mlflow": fake_servers, "prefect": fake_servers}}
    credentials = state["credentials"]
    monkeypatch.setattr(
        FakeServers,
        "accepted",
        {
            credentials["prefect_auth_string"],
            f"admin:{credentials['mlflow_admin_password']}",
            f"reader:{credentials['mlflow_reader_password']}",
        },
    )
    assert stack.workers_online(state, [])  # the workers' filter is behind Prefect's auth string
    assert stack.active_flow_runs(state) == 0
    assert stack.http_ok(f"http://127.0.0.1:{fake_servers}/health")
    stack.check_credentials(folder, state, timeout=2)

    monkeypatch.setattr(FakeServers, "anonymous_ok", True)  # a server started without its auth settings
    with pytest.raises(stack.StackError, match="MLflow without credentials: HTTP 200"):
        stack.check_credentials(folder, state, timeout=2)
    monkeypatch.setattr(FakeServers, "anonymous_ok", False)
    monkeypatch.setattr(FakeServers, "accepted", {credentials["prefect_auth_string"]})  # the store disagrees
    with pytest.raises(stack.StackError, match="MLflow's admin: HTTP 401") as caught:
        stack.check_credentials(folder, state, timeout=2)
    assert credentials["mlflow_admin_password"] not in str(caught.value)
    assert not stack.workers_online(state | {"credentials": stack.new_credentials()}, [])


def test_auth_ini_has_mlflow_keys_and_no_password():
    users = load_users_module()
    text = users.auth_ini("postgresql+psycopg2://denseflow:pa%25ss@db:5432/mlflow_auth", "admin")
    import configparser

    parsed = configparser.ConfigParser()  # interpolation on, as MLflow reads it
    parsed.read_string(text)
    section = parsed["mlflow"]
    assert section["default_permission"] == "READ"
    assert section["database_uri"] == "postgresql+psycopg2://denseflow:pa%25ss@db:5432/mlflow_auth"
    assert section["admin_username"] == "admin" and "admin_password" not in section
    assert section["authorization_function"] == "mlflow.server.auth:authenticate_request_basic_auth"
    with pytest.raises(users.UsersError):
        users.auth_ini("sqlite:///x\n[evil]", "admin")


def test_users_script_refuses_bad_settings_in_one_line_without_secrets(tmp_path, capsys):
    users = load_users_module()
    env = {
        "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "auth.ini"),
        "DENSEFLOW_MLFLOW_AUTH_DB": "postgresql+psycopg2://denseflow:db-password-123@127.0.0.1:1/mlflow_auth",
        "MLFLOW_AUTH_ADMIN_USERNAME": "admin",
        "MLFLOW_AUTH_ADMIN_PASSWORD": "admin-password-0123",
        "DENSEFLOW_MLFLOW_READER_USERNAME": "reader",
        "DENSEFLOW_MLFLOW_READER_PASSWORD": "short-pw",
    }
    assert users.main(env) == 2
    assert users.main(env | {"DENSEFLOW_MLFLOW_READER_USERNAME": "admin"}) == 2
    assert users.main({key: value for key, value in env.items() if key != "DENSEFLOW_MLFLOW_AUTH_DB"}) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "mlflow_users: DENSEFLOW_MLFLOW_READER_PASSWORD is shorter than MLflow's 12 characters",
        "mlflow_users: the admin and the read-only user have the same name (admin)",
        "mlflow_users: missing settings: DENSEFLOW_MLFLOW_AUTH_DB",
    ]
    assert not (tmp_path / "auth.ini").exists()  # nothing written before the settings are whole
    assert repr(users.User("reader", "a-secret-password", False)) == "User('reader', admin=False)"
    assert users.scrub("at postgresql://u:db-password-123@h/x: db-password-123", ["db-password-123"]) == (
        "at postgresql://u:***@h/x: ***"
    )


def test_generated_passwords_are_checked_in_one_hash_round_and_others_keep_mlflows_hash(tmp_path, monkeypatch):
    """MLflow checks the password on every request: its scrypt hash made each tracking call ~0.4 s on the stack."""
    users = load_users_module()
    (tmp_path / "auth.ini").write_text(users.auth_ini(f"sqlite:///{tmp_path / 'auth.db'}", "admin"))
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(tmp_path / "auth.ini"))
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    def stored(database: Path, generated: bool) -> tuple[str, bool]:
        uri = f"sqlite:///{database}"
        people = [users.User("admin", "a" * 32, True), users.User("reader", "r" * 32, False)]
        users.sync_users(uri, people, generated=generated)
        users.sync_users(uri, people, generated=generated)  # a second sync changes nothing and still checks
        store = SqlAlchemyStore()
        store.init_db(uri)
        return store.get_user("reader").password_hash, store.authenticate_user("reader", "r" * 32)

    fast, accepted = stored(tmp_path / "generated.db", generated=True)
    assert fast.startswith("pbkdf2:sha256:1$") and accepted
    slow, accepted = stored(tmp_path / "chosen.db", generated=False)
    assert not slow.startswith("pbkdf2:sha256:1$") and accepted
