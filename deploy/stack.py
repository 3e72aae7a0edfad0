"""The local stack: PostgreSQL, an MLflow tracking server and a Prefect server on it, a work pool and workers.

``deploy/docker-compose.yml`` is the production recipe; this is the same layout as plain processes on one
machine, on loopback, so the multi-machine path (a database server, a tracking server with proxied artifacts,
a Prefect server, workers that pick up deployment runs) can be run and tested without Docker::

    python deploy/stack.py up        # start what is not running, wait for health, print URLs and the env
    python deploy/stack.py status    # each service: running, answering, or stale (a killed `up`)
    python deploy/stack.py down      # stop every process `up` started (by the pids it recorded); data stays
    python deploy/stack.py rotate    # new credentials; a running stack is restarted on them (see below)
    python deploy/stack.py up --replicas 2      # ... and two search replicas of retriever@production (see below)
    python deploy/stack.py replicas --replicas 0  # start or stop the replicas alone, on a running stack

Nobody gets in without credentials, generated on the first `up` (``secrets``) and kept with the database
password: MLflow runs its basic-auth app (``--app-name basic-auth``, users in the database ``mlflow_auth``,
``default_permission = READ``) with two users, ``admin`` (the workers and the ``denseflow`` commands: register,
move ``production``) and ``reader`` (search replicas: read and download, every write refused with 403); the
Prefect server wants ``PREFECT_SERVER_API_AUTH_STRING`` from every client (``PREFECT_API_AUTH_STRING``). Only the
health routes answer without them (MLflow's ``/health``, Prefect's ``/api/health``). No secret is put on a command
line (``ps`` shows those to every user), in a log or in a message: the files below are the only place they are.

Everything lives in one folder (``--dir``, else ``$DENSEFLOW_STACK_DIR``, else ``.denseflow/stack`` in the
repository)::

    stack.json        ports, the database password and the credentials, and each started process's pid (the state
                      `down` reads); mode 600, as are the next three
    admin.env         the admin's client environment: URLs, MLFLOW_TRACKING_USERNAME/_PASSWORD, PREFECT_API_AUTH_STRING
                      (``set -a; . admin.env; set +a``)
    reader.env        the read-only user's: MLFLOW_TRACKING_URI and its MLflow user, no Prefect credential
    mlflow-auth.ini   the basic-auth app's configuration (``MLFLOW_AUTH_CONFIG_PATH``), by deploy/mlflow_users.py
    pg/               the PostgreSQL cluster (owned by the ``postgres`` user when this runs as root)
    artifacts/        MLflow's artifact store, served by the tracking server (``--serve-artifacts``): the S3 stand-in
    workspace/        DENSEFLOW_HOME of the workers (runs, checkpoints, published indexes, locks)
    prefect-home/     PREFECT_HOME of the server and the workers
    search.key        the search replicas' API key (mode 600; made when the first replica starts, new on `rotate`)
    replicas/<n>/     replica-<n>'s own DENSEFLOW_HOME and cache/, as a second machine would have
    logs/<service>.log

The settings are the compose file's names: ``PREFECT_API_DATABASE_CONNECTION_URL`` (asyncpg) on the Prefect
server, ``MLFLOW_TRACKING_URI``, ``PREFECT_API_URL`` and ``DENSEFLOW_HOME`` on the workers; the work pool is
``denseflow`` and the deployments are those of ``deploy/prefect.yaml``, registered with ``prefect deploy``.

``rotate`` writes new credentials (the database password stays); on a running stack it then does what `up` does
for any process started with other credentials than the recorded ones: restarts it (MLflow, Prefect, the workers)
after the new passwords are in MLflow's user store. It refuses while flow runs are pending or running (restarting a
worker ends its runs) unless ``--force``. A stack that is down gets them on its next `up`.

Search replicas (``--replicas N``, 0 unless asked; the number is recorded, so a later `up` restores them): each is
``denseflow serve --model retriever@production`` (``--model``) on a loopback port from 8080 up, with the read-only
user's environment only (``reader.env``'s, never the admin's), its own cache folder, the API key file, and the
alias polled every ``--poll-seconds``; the compose file's ``search`` service as processes. A replica needs the
reference to exist: while the registry has no such alias (a new stack, before the first retrain), or its version no
published index, `up` says so in one line and starts none (``status``: ``not started``); `up` or ``replicas`` once
a retrain has published production starts them.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BIN = Path(sys.executable).parent
STATE_FILE = "stack.json"
STACK_DIR_ENV = "DENSEFLOW_STACK_DIR"
PG_BIN_ENV = "DENSEFLOW_PG_BIN"
PG_USER = "denseflow"
DATABASES = ("mlflow", "mlflow_auth", "prefect")  # mlflow_auth: the basic-auth app's users and grants
POOL = "denseflow"
MLFLOW_ADMIN = "admin"  # every permission: the workers and the denseflow commands
MLFLOW_READER = "reader"  # default_permission (READ) only: search replicas
PREFECT_USER = "denseflow"  # the user part of Prefect's "user:password" auth string
ROLES = {"admin": MLFLOW_ADMIN, "reader": MLFLOW_READER}
# Credentials a process could inherit from the shell that runs `up`: the stack sets its own, never those.
INHERITED_SECRETS = (
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_AUTH_CONFIG_PATH",
    "MLFLOW_AUTH_ADMIN_USERNAME",
    "MLFLOW_AUTH_ADMIN_PASSWORD",
    "MLFLOW_FLASK_SERVER_SECRET_KEY",
    "PREFECT_API_AUTH_STRING",
    "PREFECT_API_KEY",
    "PREFECT_SERVER_API_AUTH_STRING",
)
# The ports docker-compose.yml publishes; a taken one moves to the next free port, and `up` says so.
DEFAULT_PORTS = {"postgres": 5432, "mlflow": 5000, "prefect": 4200}
# Search replicas: the compose file's search port and settings; replica-N asks for REPLICA_PORT + N - 1.
REPLICA_PREFIX = "replica-"
REPLICA_PORT = 8080
REPLICA_INDEX = "default"
REPLICA_KEEP_VERSIONS = 2
DEFAULT_REPLICAS = {"count": 0, "model": "retriever@production", "poll_seconds": 30.0}
SEARCH_KEY_FILE = "search.key"
# Server start-up is mostly imports and, the first time, schema migrations: slow on a loaded small machine.
START_TIMEOUT_SECONDS = 300.0
STOP_TIMEOUT_SECONDS = 30.0


class StackError(Exception):
    """Ends the command with one line on stderr (with every known secret masked)."""


# --- secrets: generated here, kept in mode-600 files, masked in everything the stack prints or logs ------------

# Every secret this process has read or made; scrub() masks them.
KNOWN_SECRETS: set[str] = set()
MIN_SCRUBBED = 8  # shorter strings are not secrets of ours, and masking them would mangle words


def token() -> str:
    return secrets.token_urlsafe(24)  # 32 URL- and shell-safe characters; MLflow wants at least 12


def new_credentials() -> dict[str, str]:
    credentials = {
        "mlflow_admin_password": token(),
        "mlflow_reader_password": token(),
        "mlflow_secret_key": secrets.token_hex(32),  # the basic-auth app's Flask key (CSRF on its sign-up form)
        "prefect_auth_string": f"{PREFECT_USER}:{token()}",
    }
    remember_secrets({"credentials": credentials})
    return credentials


def remember_secrets(state: dict[str, Any]) -> None:
    found = [state.get("password"), *(state.get("credentials") or {}).values()]
    for item in found:
        if not isinstance(item, str):
            continue
        # Prefect's auth string is "user:password": the password is a secret on its own, the user name is not.
        for secret in (item, item.partition(":")[2]):
            if len(secret) >= MIN_SCRUBBED:
                KNOWN_SECRETS.add(secret)


def scrub(text: str) -> str:
    """``text`` with every known secret, and the password of any URL in it, replaced by ``***``."""
    for secret in sorted(KNOWN_SECRETS, key=len, reverse=True):
        text = text.replace(secret, "***")
    return re.sub(r"(\w[\w+.-]*://[^:/@\s]+:)[^@/\s]+@", r"\1***@", text)


def fingerprint(state: dict[str, Any]) -> str:
    """Which credentials a process was started with (recorded beside its pid; a hash, not the secrets)."""
    text = json.dumps(state.get("credentials") or {}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_private(path: Path, text: str) -> None:
    """``text`` to ``path``, readable by this user only from its creation on, replaced atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    os.chmod(tmp, 0o600)  # a leftover file of that name kept its mode through O_TRUNC
    os.replace(tmp, path)


@dataclass
class Stack:
    """Paths and recorded state of one stack folder."""

    root: Path

    @property
    def state_path(self) -> Path:
        return self.root / STATE_FILE

    @property
    def pg_dir(self) -> Path:
        return self.root / "pg"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def workspace(self) -> Path:
        return self.root / "workspace"

    @property
    def prefect_home(self) -> Path:
        return self.root / "prefect-home"

    @property
    def auth_ini(self) -> Path:
        return self.root / "mlflow-auth.ini"

    @property
    def search_key(self) -> Path:
        return self.root / SEARCH_KEY_FILE

    def replica_dir(self, name: str) -> Path:
        """replica-<n>'s own folder (its DENSEFLOW_HOME, and its cache under ``cache/``)."""
        return self.root / "replicas" / name.removeprefix(REPLICA_PREFIX)

    def env_file(self, role: str) -> Path:
        return self.root / f"{role}.env"

    def log(self, service: str) -> Path:
        return self.root / "logs" / f"{service}.log"

    def read(self) -> dict[str, Any]:
        if not self.state_path.is_file():
            return {}
        state = json.loads(self.state_path.read_text(encoding="utf-8"))
        remember_secrets(state)
        read_search_key(self)  # masked in messages too
        return state

    def write(self, state: dict[str, Any]) -> None:
        # The file holds the database password and the credentials: readable by this user only.
        remember_secrets(state)
        write_private(self.state_path, json.dumps(state, indent=2))


def read_search_key(stack: Stack, create: bool = False) -> str | None:
    """The replicas' API key (``search.key``), made with ``secrets`` when ``create`` and there is none; remembered,
    so every message masks it. Never printed: clients read the file."""
    if create and not stack.search_key.is_file():
        write_private(stack.search_key, secrets.token_hex(32) + "\n")
    try:
        key = stack.search_key.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    if len(key) >= MIN_SCRUBBED:
        KNOWN_SECRETS.add(key)
    return key or None


def stack_dir(override: Path | str | None = None) -> Path:
    return Path(override or os.environ.get(STACK_DIR_ENV) or REPO / ".denseflow" / "stack").expanduser().resolve()


# --- the environment a client, a worker and the servers see -------------------------------------------------


def urls(state: dict[str, Any]) -> dict[str, str]:
    ports = state["ports"]
    auth = f"{PG_USER}:{state['password']}@127.0.0.1:{ports['postgres']}"
    return {
        "postgres": f"postgresql://{auth}",
        # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; the driver installed here is psycopg2.
        "mlflow_store": f"postgresql+psycopg2://{auth}/mlflow",
        "mlflow_auth_store": f"postgresql+psycopg2://{auth}/mlflow_auth",
        "prefect_store": f"postgresql+asyncpg://{auth}/prefect",
        "mlflow": f"http://127.0.0.1:{ports['mlflow']}",
        "prefect_api": f"http://127.0.0.1:{ports['prefect']}/api",
        "prefect_ui": f"http://127.0.0.1:{ports['prefect']}",
    }


def client_env(stack: Stack, state: dict[str, Any]) -> dict[str, str]:
    """What to export to use the stack from a shell: the keys of deploy/.env.example's client block."""
    found = urls(state)
    return {
        "PREFECT_API_URL": found["prefect_api"],
        "MLFLOW_TRACKING_URI": found["mlflow"],
        "DENSEFLOW_HOME": str(stack.workspace),
        "HF_HUB_OFFLINE": "1",
    }


def credential_env(state: dict[str, Any], role: str) -> dict[str, str]:
    """The credentials a client of ``role`` reads from its environment: ``admin`` (MLflow's admin and Prefect's auth
    string: the workers, the denseflow commands) or ``reader`` (MLflow's read-only user, no Prefect credential)."""
    credentials = state["credentials"]
    env = {
        "MLFLOW_TRACKING_USERNAME": ROLES[role],
        "MLFLOW_TRACKING_PASSWORD": credentials[f"mlflow_{role}_password"],
    }
    if role == "admin":
        env["PREFECT_API_AUTH_STRING"] = credentials["prefect_auth_string"]
    return env


def role_env(stack: Stack, state: dict[str, Any], role: str) -> dict[str, str]:
    """Everything a client of ``role`` needs: what admin.env and reader.env hold."""
    found = client_env(stack, state)
    if role == "reader":  # a replica: the registry and its artifacts, nothing of Prefect's or the workspace's
        found = {key: found[key] for key in ("MLFLOW_TRACKING_URI", "HF_HUB_OFFLINE")}
    return found | credential_env(state, role)


def write_env_files(stack: Stack, state: dict[str, Any]) -> None:
    for role in ROLES:
        lines = [
            f"# {role}'s environment for the stack in {stack.root} (deploy/stack.py writes it; mode 600).",
            "# Use: set -a; . <this file>; set +a",
        ]
        lines += [f"{key}={shlex.quote(value)}" for key, value in role_env(stack, state, role).items()]
        write_private(stack.env_file(role), "\n".join(lines) + "\n")


def process_env(stack: Stack, state: dict[str, Any]) -> dict[str, str]:
    env = dict(os.environ)
    # A client profile or an exported stack env must not point the servers at another store, nor hand them
    # credentials: each process gets the stack's own, below and in its starter.
    for key in ("PREFECT_API_URL", "PREFECT_PROFILE", "MLFLOW_TRACKING_URI", "PREFECT_API_DATABASE_CONNECTION_URL"):
        env.pop(key, None)
    for key in INHERITED_SECRETS:
        env.pop(key, None)
    env |= {
        "PREFECT_HOME": str(stack.prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # MLflow 3's GenAI job processes: unused here
        "TOKENIZERS_PARALLELISM": "false",
    }
    return env


# --- processes: started in their own session, recorded by pid, recognised by their command line -------------


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) is not running.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def is_ours(record: dict[str, Any]) -> bool:
    """The recorded pid is alive and still runs the command we started (a pid can be reused after a crash)."""
    pid = int(record["pid"])
    if not pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return record["marker"] in cmdline


def start_process(
    stack: Stack, name: str, command: list[str], env: dict[str, str], marker: str, as_user: str | None = None
) -> dict[str, Any]:
    log = stack.log(name)
    log.parent.mkdir(parents=True, exist_ok=True)
    extra: dict[str, Any] = {}
    if as_user:
        entry = pwd.getpwnam(as_user)
        extra = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    with log.open("ab") as out:
        # Secrets travel in the environment, never in ``command``; masked here all the same.
        out.write(scrub(f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(command)}\n").encode())
        out.flush()
        popen = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=REPO,
            start_new_session=True,  # its own process group: `down` stops it and its children together
            **extra,
        )
    return {"pid": popen.pid, "marker": marker, "log": str(log), "started_at": time.time()}


def stop_process(record: dict[str, Any], stop_signal: int) -> bool:
    """Stop the process group we started (by its recorded pid); SIGKILL after the timeout. True if it was running."""
    pid = int(record["pid"])
    if not is_ours(record):
        kill_group(pid, signal.SIGKILL)  # children a killed leader left behind
        return False
    kill_group(pid, stop_signal)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.2)
    kill_group(pid, signal.SIGKILL)
    return True


def kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_port(service: str, wanted: int, taken: set[int]) -> int:
    port = wanted
    while port in taken or not port_free(port):
        port += 1
    if port != wanted:
        print(f"stack: port {wanted} is in use: {service} on {port}")
    return port


def http_ok(url: str, timeout: float = 5.0) -> bool:
    """The health routes: both servers answer them without credentials."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def basic_auth(user_and_password: str) -> dict[str, str]:
    """The ``Authorization`` header of HTTP basic auth; Prefect's auth string is ``user:password`` already."""
    return {"Authorization": "Basic " + base64.b64encode(user_and_password.encode()).decode()}


def http_call(url: str, auth: str | None, body: dict[str, Any] | None = None, timeout: float = 5.0) -> tuple[int, Any]:
    """A GET (or a JSON POST when ``body`` is given) with basic auth: the status (0: no answer) and the JSON reply."""
    headers = basic_auth(auth) if auth else {}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, headers=headers, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
            status = response.status
    except urllib.error.HTTPError as err:
        return err.code, None
    except (urllib.error.URLError, OSError, ValueError):
        return 0, None
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, None


def wait_for(what: str, check, record: dict[str, Any], timeout: float = START_TIMEOUT_SECONDS) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if not pid_alive(int(record["pid"])):
            raise StackError(f"{what} exited during start-up; see {record['log']}")
        time.sleep(1)
    raise StackError(f"{what} did not answer within {timeout:.0f}s; see {record['log']}")


# --- PostgreSQL ------------------------------------------------------------------------------------------------


def postgres_bin() -> Path:
    """The folder holding initdb and postgres: $DENSEFLOW_PG_BIN, else Debian's newest, else PATH."""
    wanted = ("initdb", "postgres", "pg_isready")
    override = os.environ.get(PG_BIN_ENV)
    candidates = [Path(override)] if override else sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    if not override and shutil.which("initdb"):
        candidates.append(Path(shutil.which("initdb")).parent)
    for folder in candidates:
        if all((folder / name).is_file() for name in wanted):
            return folder
    where = f"{PG_BIN_ENV}={override}" if override else "/usr/lib/postgresql/*/bin or PATH"
    raise StackError(
        f"PostgreSQL server binaries (initdb, postgres) not found in {where}: install PostgreSQL 15 "
        f"(Debian: apt-get install postgresql-15) or set {PG_BIN_ENV} to its bin folder"
    )


def postgres_user() -> str | None:
    """initdb and postgres refuse to run as root: as root they run as the ``postgres`` OS user."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError as err:
        raise StackError("running as root, and there is no `postgres` OS user to run PostgreSQL as") from err
    return "postgres"


def reachable_by(user: str, path: Path) -> bool:
    """Can ``user`` traverse every folder above ``path``? (pytest's and mkdtemp's folders are private.)"""
    entry = pwd.getpwnam(user)
    for folder in [*reversed(path.parents)]:
        info = folder.stat()
        mode = info.st_mode
        if info.st_uid == entry.pw_uid:
            ok = mode & 0o100
        elif info.st_gid == entry.pw_gid:
            ok = mode & 0o010
        else:
            ok = mode & 0o001
        if not ok:
            return False
    return True


def init_postgres(stack: Stack, state: dict[str, Any], pg_bin: Path, user: str | None) -> None:
    """A new cluster in pg/ with password authentication for the ``denseflow`` role, on first `up` only."""
    if (stack.pg_dir / "PG_VERSION").is_file():
        return
    if user and not reachable_by(user, stack.root):
        raise StackError(f"{stack.root}: the `{user}` OS user cannot reach this folder (a parent is private)")
    stack.pg_dir.mkdir(parents=True, exist_ok=True)
    stack.pg_dir.chmod(0o700)
    pwfile = stack.root / ".pgpass-init"
    pwfile.write_text(state["password"] + "\n")
    pwfile.chmod(0o600)
    try:
        if user:
            entry = pwd.getpwnam(user)
            os.chown(stack.pg_dir, entry.pw_uid, entry.pw_gid)
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        command = [str(pg_bin / "initdb"), "-D", str(stack.pg_dir), "-U", PG_USER, "--pwfile", str(pwfile)]
        command += ["--auth", "scram-sha-256", "-E", "UTF8", "--locale", "C.UTF-8"]
        done = subprocess.run(command, capture_output=True, text=True, user=user, cwd="/")
        if done.returncode != 0:
            last = (done.stderr or done.stdout).strip().splitlines()
            raise StackError(f"initdb failed: {last[-1] if last else done.returncode}")
    finally:
        pwfile.unlink(missing_ok=True)


def postgres_ready(pg_bin: Path, port: int) -> bool:
    done = subprocess.run(
        [str(pg_bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-q"], capture_output=True, timeout=10
    )
    return done.returncode == 0


def create_databases(state: dict[str, Any]) -> None:
    import psycopg2

    connection = psycopg2.connect(urls(state)["postgres"] + "/postgres", connect_timeout=10)
    connection.autocommit = True  # CREATE DATABASE cannot run inside a transaction
    try:
        with connection.cursor() as cursor:
            for name in DATABASES:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cursor.fetchone() is None:
                    cursor.execute(f'CREATE DATABASE "{name}"')
    finally:
        connection.close()


# --- the services ----------------------------------------------------------------------------------------------


def start_postgres(stack: Stack, state: dict[str, Any]) -> dict[str, Any]:
    pg_bin = postgres_bin()
    user = postgres_user()
    init_postgres(stack, state, pg_bin, user)
    port = state["ports"]["postgres"]
    # Loopback TCP only; no Unix socket (its default folder, /var/run/postgresql, belongs to the system cluster).
    command = [str(pg_bin / "postgres"), "-D", str(stack.pg_dir), "-h", "127.0.0.1", "-p", str(port), "-k", ""]
    return start_process(stack, "postgres", command, process_env(stack, state), str(stack.pg_dir), as_user=user)


def sync_mlflow_users(stack: Stack, state: dict[str, Any]) -> None:
    """deploy/mlflow_users.py: the basic-auth ini, and the admin and reader users with the recorded passwords (created,
    or their passwords changed after a rotation), before the MLflow server starts or while it runs. The secrets go
    through the environment, not the command line."""
    credentials = state["credentials"]
    env = process_env(stack, state) | {
        "MLFLOW_AUTH_CONFIG_PATH": str(stack.auth_ini),
        "DENSEFLOW_MLFLOW_AUTH_DB": urls(state)["mlflow_auth_store"],
        "DENSEFLOW_MLFLOW_GENERATED_PASSWORDS": "1",  # ours are secrets.token_urlsafe(24): mlflow_users.py
        "MLFLOW_AUTH_ADMIN_USERNAME": MLFLOW_ADMIN,
        "MLFLOW_AUTH_ADMIN_PASSWORD": credentials["mlflow_admin_password"],
        "DENSEFLOW_MLFLOW_READER_USERNAME": MLFLOW_READER,
        "DENSEFLOW_MLFLOW_READER_PASSWORD": credentials["mlflow_reader_password"],
    }
    done = subprocess.run(
        [sys.executable, str(HERE / "mlflow_users.py")],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_SECONDS,
    )
    if done.returncode != 0:
        raise StackError(f"MLflow users: {last_line(done)}")
    for line in done.stdout.splitlines():
        if line.startswith("mlflow_users: "):
            print(f"stack: MLflow {line.removeprefix('mlflow_users: ')}")


def start_mlflow(stack: Stack, state: dict[str, Any]) -> dict[str, Any]:
    stack.artifacts.mkdir(parents=True, exist_ok=True)
    port = state["ports"]["mlflow"]
    command = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    command += ["--app-name", "basic-auth"]
    command += ["--serve-artifacts", "--artifacts-destination", str(stack.artifacts)]
    env = process_env(stack, state) | {
        # The store URL holds the database password: in the environment (the option's own variable), not argv.
        "MLFLOW_BACKEND_STORE_URI": urls(state)["mlflow_store"],
        "MLFLOW_AUTH_CONFIG_PATH": str(stack.auth_ini),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": state["credentials"]["mlflow_secret_key"],
    }
    return start_process(stack, "mlflow", command, env, f"--port {port}")


def start_prefect(stack: Stack, state: dict[str, Any]) -> dict[str, Any]:
    port = state["ports"]["prefect"]
    env = process_env(stack, state) | {
        "PREFECT_API_DATABASE_CONNECTION_URL": urls(state)["prefect_store"],
        "PREFECT_UI_API_URL": urls(state)["prefect_api"],
        "PREFECT_SERVER_API_AUTH_STRING": state["credentials"]["prefect_auth_string"],
    }
    command = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    return start_process(stack, "prefect", command, env, f"--port {port}")


def worker_env(stack: Stack, state: dict[str, Any]) -> dict[str, str]:
    stack.workspace.mkdir(parents=True, exist_ok=True)
    # The runs get deploy/prefect.yaml's job variables on top (MLflow's HTTP retry settings among them), and the
    # worker's environment, so the admin's credentials.
    return process_env(stack, state) | client_env(stack, state) | credential_env(state, "admin")


def start_worker(stack: Stack, state: dict[str, Any], name: str) -> dict[str, Any]:
    command = [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--type", "process", "--name", name]
    return start_process(stack, name, command, worker_env(stack, state), f"--name {name}")


# --- search replicas: `denseflow serve --model`, as the read-only user, each with its own cache ------------------


def is_replica(name: str) -> bool:
    return name.startswith(REPLICA_PREFIX)


def replica_settings(state: dict[str, Any]) -> dict[str, Any]:
    """How many replicas the stack runs, of which reference, polled how often (``state["replicas"]``)."""
    return DEFAULT_REPLICAS | (state.get("replicas") or {})


def replica_names(state: dict[str, Any]) -> list[str]:
    return [f"{REPLICA_PREFIX}{number}" for number in range(1, int(replica_settings(state)["count"]) + 1)]


def replica_url(state: dict[str, Any], name: str) -> str:
    return f"http://127.0.0.1:{state['ports'][name]}"


def replica_serves(settings: dict[str, Any]) -> dict[str, Any]:
    """What a replica was started to serve (recorded beside its pid: other settings mean a restart)."""
    return {"model": settings["model"], "poll_seconds": float(settings["poll_seconds"])}


def replica_credentials(state: dict[str, Any], key: str | None) -> str:
    """Which credentials and API key a replica was started with: a hash, as :func:`fingerprint`."""
    return hashlib.sha256(f"{fingerprint(state)}:{key}".encode()).hexdigest()[:16]


def parse_reference(reference: str) -> tuple[str, str | None, str | None]:
    """``name@alias`` or ``name/<version>``: (name, alias, version); anything else is refused."""
    name, at, alias = reference.rpartition("@")
    if at and name and alias:
        return name, alias, None
    name, slash, version = reference.rpartition("/")
    if slash and name and version.isdigit():
        return name, None, version
    raise StackError(f"--model {reference!r}: give a registry reference, name@alias (retriever@production) or name/3")


def served_version(state: dict[str, Any], reference: str) -> tuple[str | None, str]:
    """What ``reference`` names in the registry, looked up as the read-only user: (the model version, "") when it
    has a published index a replica can serve, else (None, why not). A server that refuses the reader is an error."""
    name, alias, version = parse_reference(reference)
    mlflow = urls(state)["mlflow"]
    if alias:
        query = urllib.parse.urlencode({"name": name, "alias": alias})
        url = f"{mlflow}/api/2.0/mlflow/registered-models/alias?{query}"
    else:
        url = f"{mlflow}/api/2.0/mlflow/model-versions/get?{urllib.parse.urlencode({'name': name, 'version': version})}"
    status, found = http_call(url, f"{MLFLOW_READER}:{state['credentials']['mlflow_reader_password']}")
    # No such alias on a model: 400 (INVALID_PARAMETER_VALUE) from MLflow's SQL store; no such model: 403 from the
    # basic-auth app to a user who is not an admin (it does not disclose which models exist), 404 without it.
    if status in (400, 403, 404):
        return None, f"the registry has no {reference} yet (MLflow answered {status} to {MLFLOW_READER})"
    if status != 200 or not isinstance(found, dict) or "model_version" not in found:
        raise StackError(f"looking {reference} up as {MLFLOW_READER}: HTTP {status or 'no answer'} from {mlflow}")
    model_version = found["model_version"]
    tags = {tag.get("key"): tag.get("value") for tag in model_version.get("tags") or []}
    if not tags.get(f"index.{REPLICA_INDEX}"):
        return None, (
            f"{reference} is version {model_version.get('version')}, which has no published index "
            f"(no index.{REPLICA_INDEX} tag)"
        )
    return str(model_version.get("version")), ""


def replica_env(stack: Stack, state: dict[str, Any], name: str) -> dict[str, str]:
    """The read-only user's environment (reader.env's keys), never the admin's; a home of its own."""
    env = process_env(stack, state) | role_env(stack, state, "reader")
    env.pop("PREFECT_HOME", None)  # nothing of Prefect's: the command sets its own under DENSEFLOW_HOME
    env.pop("DENSEFLOW_HOME", None)
    return env | {"DENSEFLOW_HOME": str(stack.replica_dir(name))}


def start_replica(stack: Stack, state: dict[str, Any], name: str) -> dict[str, Any]:
    settings = replica_settings(state)
    cache = stack.replica_dir(name) / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    command = [str(BIN / "denseflow"), "serve", "--model", settings["model"], "--name", REPLICA_INDEX]
    command += ["--cache-dir", str(cache), "--api-key-file", str(stack.search_key)]  # the key's file, not the key
    command += ["--host", "127.0.0.1", "--port", str(state["ports"][name])]
    command += ["--poll-seconds", f"{float(settings['poll_seconds']):g}", "--keep-versions", str(REPLICA_KEEP_VERSIONS)]
    return start_process(stack, name, command, replica_env(stack, state, name), f"--cache-dir {cache}")


def replica_health(state: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The replica's ``/health`` answer (open without the key), None when it does not answer."""
    if name not in state.get("ports", {}):
        return None
    status, found = http_call(f"{replica_url(state, name)}/health", None)
    return found if status == 200 and isinstance(found, dict) else None


def describe_replica(health: dict[str, Any]) -> str:
    registry = health.get("registry") or {}
    text = (
        f"{registry.get('reference')}: version {registry.get('served_version')} "
        f"(index {health.get('index')}/{health.get('index_version')})"
    )
    if health.get("stale"):
        text += ", stale: the tracking server does not answer"
    elif registry.get("last_error"):
        text += f", {health.get('status')}: {registry['last_error']}"
    return text


def last_log_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


def ensure_replicas(stack: Stack, state: dict[str, Any]) -> None:
    """Make the recorded number of replicas run (MLflow answering): stop the extra ones and those started with
    other credentials, key or settings, then start the missing ones, unless their reference cannot be served yet
    (recorded in ``not_started`` and said in one line). Waits until each started one answers ``/health``."""
    settings = state.setdefault("replicas", dict(DEFAULT_REPLICAS))
    settings.pop("not_started", None)
    wanted = replica_names(state)
    services: dict[str, Any] = state.setdefault("services", {})
    ports: dict[str, int] = state.setdefault("ports", {})
    key = read_search_key(stack, create=bool(wanted))
    for name in sorted(item for item in services if is_replica(item)):
        record = services[name]
        if name not in wanted:
            was_running = stop_process(services.pop(name), signal.SIGTERM)
            print(f"stack: {name} {'stopped' if was_running else 'was not running'} (pid {record['pid']})")
        elif not is_ours(record):
            print(f"stack: {name} from an earlier `up` is not running: restarting it")
            stop_process(services.pop(name), signal.SIGTERM)
        elif record.get("credentials") != replica_credentials(state, key):
            print(f"stack: {name} runs with other credentials or key than the recorded ones: restarting it")
            stop_process(services.pop(name), signal.SIGTERM)
        elif record.get("serves") != replica_serves(settings):
            print(f"stack: {name} serves other settings than asked: restarting it")
            stop_process(services.pop(name), signal.SIGTERM)
        stack.write(state)
    for name in [item for item in ports if is_replica(item) and item not in wanted]:
        ports.pop(name)
    missing = [name for name in wanted if name not in services]
    if missing:
        version, why_not = served_version(state, settings["model"])
        if version is None:
            settings["not_started"] = why_not
            stack.write(state)
            print(f"stack: search replicas not started: {why_not}; `up` or `replicas` starts them once it has one")
            return
    taken = {port for name, port in ports.items() if name not in missing}
    for name in missing:
        wanted_port = ports.get(name, REPLICA_PORT + int(name.removeprefix(REPLICA_PREFIX)) - 1)
        ports[name] = pick_port(name, wanted_port, taken)
        taken.add(ports[name])
    stack.write(state)
    for name in missing:
        record = start_replica(stack, state, name)
        record |= {"credentials": replica_credentials(state, key), "serves": replica_serves(settings)}
        services[name] = record
        stack.write(state)
    for name in missing:
        record = services[name]
        try:
            wait_for(name, lambda name=name: replica_health(state, name) is not None, record)
        except StackError as err:
            last = last_log_line(Path(record["log"]))
            raise StackError(f"{err}: {last}" if last else str(err)) from None


def prefect_cli(stack: Stack, state: dict[str, Any], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "prefect"), *args],
        env=worker_env(stack, state),
        cwd=REPO,  # `prefect deploy` records this folder; the workers start each run in it
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_SECONDS,
    )


def deploy(stack: Stack, state: dict[str, Any], prefect_file: Path) -> None:
    """The ``denseflow`` process work pool and the deployments of ``prefect_file`` (both idempotent)."""
    if prefect_cli(stack, state, "work-pool", "inspect", POOL).returncode != 0:
        created = prefect_cli(stack, state, "work-pool", "create", POOL, "--type", "process")
        if created.returncode != 0:
            raise StackError(f"prefect work-pool create {POOL} failed: {last_line(created)}")
    done = prefect_cli(stack, state, "--no-prompt", "deploy", "--prefect-file", str(prefect_file), "--all")
    if done.returncode != 0:
        raise StackError(f"prefect deploy --prefect-file {prefect_file} failed: {last_line(done)}")


def last_line(done: subprocess.CompletedProcess) -> str:
    lines = [line for line in (done.stderr + done.stdout).strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else f"exit status {done.returncode}"


def prefect_call(state: dict[str, Any], path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    auth = (state.get("credentials") or {}).get("prefect_auth_string")
    return http_call(f"{urls(state)['prefect_api']}{path}", auth, body)


def workers_online(state: dict[str, Any], names: list[str]) -> bool:
    status, found = prefect_call(state, f"/work_pools/{POOL}/workers/filter", {})
    if status != 200 or not isinstance(found, list):
        return False
    online = {item.get("name"): item.get("status") for item in found}
    return all(online.get(name) == "ONLINE" for name in names)


ACTIVE_RUN_STATES = ["PENDING", "RUNNING", "CANCELLING"]


def active_flow_runs(state: dict[str, Any]) -> int | None:
    """Flow runs pending or running on the Prefect server; None when it does not answer."""
    status, count = prefect_call(
        state, "/flow_runs/count", {"flow_runs": {"state": {"type": {"any_": ACTIVE_RUN_STATES}}}}
    )
    return count if status == 200 and isinstance(count, int) else None


def check_credentials(stack: Stack, state: dict[str, Any], timeout: float = 60.0) -> None:
    """Each server refuses a call without credentials and takes the recorded ones: checked once both answer, so a
    server started without its auth settings, or a user store that disagrees with stack.json, stops `up`."""
    found = urls(state)
    current_user = f"{found['mlflow']}/api/2.0/mlflow/users/current"
    credentials = state["credentials"]
    checks = {
        "MLflow without credentials": (current_user, None, None, 401),
        "MLflow's admin": (current_user, f"{MLFLOW_ADMIN}:{credentials['mlflow_admin_password']}", None, 200),
        "MLflow's reader": (current_user, f"{MLFLOW_READER}:{credentials['mlflow_reader_password']}", None, 200),
        "Prefect without credentials": (f"{found['prefect_api']}/flow_runs/count", None, {}, 401),
        "Prefect's auth string": (
            f"{found['prefect_api']}/flow_runs/count",
            credentials["prefect_auth_string"],
            {},
            200,
        ),
    }
    for what, (url, auth, body, wanted) in checks.items():
        deadline = time.monotonic() + timeout
        status = 0
        while time.monotonic() < deadline:
            status, _ = http_call(url, auth, body)
            if status == wanted or status not in (0, 502, 503):
                break
            time.sleep(1)
        if status != wanted:
            service = "mlflow" if what.startswith("MLflow") else "prefect"
            raise StackError(f"{what}: HTTP {status or 'no answer'} from {url}, not {wanted}; see {stack.log(service)}")


# Each service's health: what `status` reports and what `up` waits for.
def healthy(stack: Stack, state: dict[str, Any], name: str) -> bool:
    found = urls(state)
    if name == "postgres":
        try:
            return postgres_ready(postgres_bin(), state["ports"]["postgres"])
        except StackError:
            return False
    if name == "mlflow":
        return http_ok(f"{found['mlflow']}/health")
    if name == "prefect":
        return http_ok(f"{found['prefect_api']}/health")
    if is_replica(name):
        return replica_health(state, name) is not None
    return workers_online(state, [name])


# Stop order is the reverse: workers before the servers they call, PostgreSQL last.
SERVERS = ("postgres", "mlflow", "prefect")
STOP_SIGNALS = {"postgres": signal.SIGINT, "mlflow": signal.SIGTERM}  # SIGINT: PostgreSQL's fast shutdown


def worker_names(state: dict[str, Any]) -> list[str]:
    return [f"worker-{number}" for number in range(1, int(state.get("workers", 2)) + 1)]


def service_order(state: dict[str, Any]) -> list[str]:
    return [*SERVERS, *worker_names(state), *replica_names(state)]


def stop_signal(name: str) -> int:
    return signal.SIGTERM if is_replica(name) else STOP_SIGNALS.get(name, signal.SIGINT)


# --- the commands ----------------------------------------------------------------------------------------------


def inspect(stack: Stack) -> tuple[dict[str, Any], dict[str, str]]:
    """The recorded state and each recorded service's condition: running, not answering, or stale."""
    state = stack.read()
    conditions = {}
    not_started = replica_settings(state).get("not_started") if state else None
    for name in service_order(state) if state else []:
        record = state.get("services", {}).get(name)
        if record is None:
            conditions[name] = f"not started: {not_started}" if is_replica(name) and not_started else "stopped"
        elif not is_ours(record):
            conditions[name] = f"stale (pid {record['pid']} is not running)"
        elif is_replica(name):
            health = replica_health(state, name)
            if health is None:
                conditions[name] = f"not answering (pid {record['pid']})"
            else:
                conditions[name] = (
                    f"running (pid {record['pid']}) {replica_url(state, name)} {describe_replica(health)}"
                )
        elif not healthy(stack, state, name):
            conditions[name] = f"not answering (pid {record['pid']})"
        else:
            conditions[name] = f"running (pid {record['pid']})"
    return state, conditions


def cmd_status(stack: Stack, as_json: bool = False) -> int:
    state, conditions = inspect(stack)
    if not state:
        print(f"stack: nothing in {stack.root} (run `python deploy/stack.py up`)")
        return 3
    if as_json:
        files = {role: str(stack.env_file(role)) for role in ROLES}
        shown = {"dir": str(stack.root), "services": conditions, "env": client_env(stack, state), "env_files": files}
        shown["replicas"] = {name: replica_url(state, name) for name in replica_names(state) if name in state["ports"]}
        shown["search_key_file"] = str(stack.search_key)
        print(json.dumps(shown, indent=2))
    else:
        for name, condition in conditions.items():
            print(f"{name:<10} {condition}")
    stale = [name for name, condition in conditions.items() if condition.startswith("stale")]
    if stale:
        print(f"stack: stale state from a stopped or killed `up` ({', '.join(stale)}): `up` restarts them")
    # A replica waiting for its reference to exist is the stack as asked for, not a failure.
    running = all(condition.startswith(("running", "not started")) for condition in conditions.values())
    if running and not as_json:
        print_env(stack, state)
    return 0 if running else 1


def print_env(stack: Stack, state: dict[str, Any]) -> None:
    found = urls(state)
    print(f"MLflow      {found['mlflow']} (users {MLFLOW_ADMIN} and {MLFLOW_READER}, read-only)")
    print(f"Prefect UI  {found['prefect_ui']} (asks for the auth string: PREFECT_API_AUTH_STRING in admin.env)")
    print(f"PostgreSQL  127.0.0.1:{state['ports']['postgres']} (user {PG_USER}, password in {stack.state_path})")
    print("# to use the stack from this shell (the credentials stay in the mode-600 file, not on screen):")
    for key, value in client_env(stack, state).items():
        print(f"export {key}={value}")
    print(f"set -a; . {shlex.quote(str(stack.env_file('admin')))}; set +a")
    print(f"# a search replica reads the registry as the read-only user: {stack.env_file('reader')}")
    started = [name for name in replica_names(state) if name in state.get("services", {})]
    if started:
        model = replica_settings(state)["model"]
        print(f"# search replicas of {model}; the API key is in {stack.search_key} (mode 600):")
        for name in started:
            print(f"search      {replica_url(state, name)} ({name}; /health open, /search and /metrics need the key)")
        key = shlex.quote(str(stack.search_key))
        print(f'curl -H "Authorization: Bearer $(cat {key})" "{replica_url(state, started[0])}/search?q=...&k=5"')


def set_replicas(
    state: dict[str, Any], count: int | None, model: str | None = None, poll_seconds: float | None = None
) -> None:
    """Record the replicas asked for; what is not given stays as recorded (none on a new stack)."""
    settings = replica_settings(state)
    if count is not None:
        if count < 0:
            raise StackError(f"--replicas {count}: give 0 or more")
        settings["count"] = count
    if model is not None:
        parse_reference(model)
        settings["model"] = model
    if poll_seconds is not None:
        if poll_seconds <= 0:
            raise StackError(f"--poll-seconds {poll_seconds:g}: give a positive number of seconds")
        settings["poll_seconds"] = poll_seconds
    state["replicas"] = settings


def cmd_up(
    stack: Stack,
    workers: int,
    prefect_file: Path,
    replicas: int | None = None,
    model: str | None = None,
    poll_seconds: float | None = None,
) -> int:
    started = time.monotonic()
    try:
        import asyncpg  # noqa: F401 - the Prefect server's driver
        import flask_wtf  # noqa: F401 - MLflow's basic-auth app
        import psycopg2  # noqa: F401 - MLflow's driver and database creation
    except ImportError as err:
        raise StackError(
            f"{err.name} is missing: pip install -e '.[stack]' (psycopg2-binary, asyncpg, mlflow[auth])"
        ) from err
    postgres_bin()  # fail before anything starts when PostgreSQL is not installed
    state, conditions = inspect(stack)
    set_replicas(state, replicas, model, poll_seconds)  # checked before anything starts
    for name, condition in conditions.items():
        if condition.startswith("stale") and not is_replica(name):  # replicas: ensure_replicas, at the end
            print(f"stack: {name} from an earlier `up` is not running: restarting it")
    state.setdefault("password", secrets.token_urlsafe(18))
    credentials = state.setdefault("credentials", {})
    for key, value in new_credentials().items():  # first `up`, or a stack from before the credentials
        credentials.setdefault(key, value)
    state["workers"] = workers
    services: dict[str, Any] = state.setdefault("services", {})
    # Keep every process that still runs, answering or not: a worker cannot answer while the Prefect server is
    # down, and restarting it would kill the flow runs it is running. The rest (stale or never started) is
    # cleaned up (what is left of its process group) and started again; so is a process started with other
    # credentials than the recorded ones (after `rotate`, or from before the stack had any).
    # Replicas are left to ensure_replicas, once MLflow answers.
    keep = {
        name
        for name, condition in conditions.items()
        if condition.startswith(("running", "not answering")) and not is_replica(name)
    }
    for name in sorted(keep - {"postgres"}):
        if services[name].get("credentials") != fingerprint(state):
            print(f"stack: {name} runs with other credentials than {stack.state_path.name}: restarting it")
            keep.discard(name)
    # Workers first: a server stopped under a running worker only makes it retry.
    for name in sorted(services, key=lambda name: name in SERVERS):
        if name not in keep and not is_replica(name):
            stop_process(services.pop(name), stop_signal(name))
    ports = state.setdefault("ports", {})
    taken: set[int] = set()
    for name, wanted in DEFAULT_PORTS.items():
        if name not in keep:
            ports[name] = pick_port(name, ports.get(name, wanted), taken | {ports[n] for n in keep if n in ports})
        taken.add(ports[name])
    stack.write(state)
    write_env_files(stack, state)

    def launch(name: str, starter) -> dict[str, Any]:  # noqa: ANN001
        record = starter(stack, state) if name in SERVERS else start_worker(stack, state, name)
        record["credentials"] = fingerprint(state)
        services[name] = record
        stack.write(state)
        return record

    if "postgres" not in keep:
        record = launch("postgres", start_postgres)
        wait_for("PostgreSQL", lambda: healthy(stack, state, "postgres"), record)
    create_databases(state)
    # Prefect starts while MLflow's users are written (start-up is mostly imports and migrations); MLflow after
    # them, since its basic-auth app reads the ini and finds its admin there.
    if "prefect" not in keep:
        launch("prefect", start_prefect)
    sync_mlflow_users(stack, state)
    if "mlflow" not in keep:
        launch("mlflow", start_mlflow)
    for name in ("mlflow", "prefect"):
        wait_for(name, lambda name=name: healthy(stack, state, name), services[name])
    check_credentials(stack, state)
    deploy(stack, state, prefect_file)
    for name in worker_names(state):
        if name not in keep:
            launch(name, None)
    for name in worker_names(state):  # kept ones too: they reconnect to a restarted server by themselves
        wait_for(name, lambda name=name: healthy(stack, state, name), services[name])
    ensure_replicas(stack, state)
    state["up_seconds"] = round(time.monotonic() - started, 1)
    stack.write(state)
    print(f"stack: up in {state['up_seconds']:.0f}s ({stack.root})")
    print_env(stack, state)
    return 0


def cmd_down(stack: Stack) -> int:
    state = stack.read()
    services = state.get("services", {})
    if not services:
        print(f"stack: nothing running from {stack.root}")
        return 0
    # Anything recorded beyond the numbers asked for now, replicas and workers before the servers they call,
    # PostgreSQL last.
    order = list(reversed(service_order(state)))
    for name in [name for name in list(services) if name not in order] + order:
        record = services.pop(name, None)
        if record is None:
            continue
        was_running = stop_process(record, stop_signal(name))
        print(f"stack: {name} {'stopped' if was_running else 'was not running'} (pid {record['pid']})")
        stack.write(state)
    print(f"stack: down; data kept in {stack.root}")
    return 0


def cmd_rotate(stack: Stack, force: bool, prefect_file: Path) -> int:
    """New MLflow passwords, Prefect auth string and Flask key in stack.json and the env files; a running stack is
    brought onto them by `up` (MLflow's users changed in its store, every process but PostgreSQL restarted)."""
    state, conditions = inspect(stack)
    if not state:
        print(f"stack: nothing in {stack.root} (run `python deploy/stack.py up`)")
        return 3
    running = [name for name, condition in conditions.items() if condition.startswith(("running", "not answering"))]
    if not force and any(name != "postgres" for name in running):
        active = active_flow_runs(state)
        if active is None:
            raise StackError("the Prefect server does not answer, so runs in flight cannot be ruled out: --force")
        if active:
            raise StackError(
                f"{active} flow run(s) pending or running: rotating restarts the workers, which ends their runs; "
                "wait for them, or pass --force"
            )
    state["credentials"] = new_credentials()
    stack.write(state)
    write_env_files(stack, state)
    files = ", ".join(str(stack.env_file(role)) for role in ROLES)
    if stack.search_key.is_file():  # the replicas' API key too: `up` restarts them on it
        write_private(stack.search_key, secrets.token_hex(32) + "\n")
        read_search_key(stack)
        files += f", {stack.search_key}"
    print(f"stack: new credentials in {stack.state_path} ({files})")
    if not running:
        print("stack: the stack is down; the next `up` starts it with them")
        return 0
    print("stack: restarting the servers, workers and any replicas with them; clients must read the new files")
    return cmd_up(stack, int(state.get("workers", 2)), prefect_file)


def cmd_replicas(stack: Stack, count: int | None, model: str | None, poll_seconds: float | None) -> int:
    """Start or stop the search replicas alone, on a running stack (no other process is touched)."""
    state = stack.read()
    if not state:
        print(f"stack: nothing in {stack.root} (run `python deploy/stack.py up`)")
        return 3
    if not healthy(stack, state, "mlflow"):
        raise StackError(f"MLflow does not answer at {urls(state)['mlflow']}: start the stack with `up` first")
    set_replicas(state, 2 if count is None and not replica_settings(state)["count"] else count, model, poll_seconds)
    stack.write(state)
    ensure_replicas(stack, state)
    if replica_settings(state).get("not_started"):
        return 1
    running = [name for name in replica_names(state) if name in state.get("services", {})]
    model = replica_settings(state)["model"]
    print(f"stack: {len(running)} search replica(s) of {model}; the API key is in {stack.search_key}")
    for name in running:
        print(f"search      {replica_url(state, name)} ({name})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down", "status", "rotate", "replicas"])
    parser.add_argument("--dir", type=Path, help=f"stack folder (default: ${STACK_DIR_ENV} or .denseflow/stack)")
    parser.add_argument("--workers", type=int, default=2, help="process workers on the pool (default: %(default)s)")
    parser.add_argument("--prefect-file", type=Path, default=HERE / "prefect.yaml", help="deployments to register")
    parser.add_argument("--json", action="store_true", help="status as JSON")
    parser.add_argument("--force", action="store_true", help="rotate even while flow runs are in flight")
    parser.add_argument(
        "--replicas",
        type=int,
        help="up, replicas: search replicas to run (default: as recorded; none on a new stack, 2 for `replicas`)",
    )
    parser.add_argument("--model", help="up, replicas: the reference they serve (default: retriever@production)")
    parser.add_argument("--poll-seconds", type=float, help="up, replicas: how often they look it up (default: 30)")
    args = parser.parse_args(argv)
    stack = Stack(stack_dir(args.dir))
    try:
        set_replicas({}, args.replicas, args.model, args.poll_seconds)  # bad settings: one line, before anything
        if args.command == "up":
            return cmd_up(
                stack, args.workers, args.prefect_file.resolve(), args.replicas, args.model, args.poll_seconds
            )
        if args.command == "replicas":
            return cmd_replicas(stack, args.replicas, args.model, args.poll_seconds)
        if args.command == "down":
            return cmd_down(stack)
        if args.command == "rotate":
            return cmd_rotate(stack, args.force, args.prefect_file.resolve())
        return cmd_status(stack, args.json)
    except StackError as err:
        print(f"stack {args.command}: {scrub(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"stack {args.command}: interrupted; `status` shows what runs, `down` stops it", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
