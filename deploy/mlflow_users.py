"""MLflow's basic-auth app for the stack: its configuration file, and the two users it knows.

Run before ``mlflow server --app-name basic-auth`` starts: by ``deploy/stack.py up``, and in
``deploy/docker-compose.yml``'s mlflow service (this file is mounted there). It writes the auth app's ini file, then
makes the user store hold exactly the passwords it is given (creating a user that is missing, changing a password
that differs), so the caller's secrets file stays the one truth: a rotation is new passwords there and this again.

- ``admin``: an MLflow admin (every permission): the workers and the ``denseflow`` commands that register
  versions and move ``production``;
- ``reader``: no grant of its own, so MLflow's ``default_permission`` (READ) on everything: search replicas read
  the registry and download a version's artifacts, and are refused (403) every write, an alias move included.

Everything comes from the environment, never the command line (which ``ps`` shows to every user)::

    MLFLOW_AUTH_CONFIG_PATH            where the ini is written (the server reads it from there)
    DENSEFLOW_MLFLOW_AUTH_DB           the user store, a SQLAlchemy URL (a database beside MLflow's own)
    MLFLOW_AUTH_ADMIN_USERNAME         the admin's name and password (MLflow's own names for the bootstrap admin)
    MLFLOW_AUTH_ADMIN_PASSWORD
    DENSEFLOW_MLFLOW_READER_USERNAME   the read-only user's name and password
    DENSEFLOW_MLFLOW_READER_PASSWORD
    DENSEFLOW_MLFLOW_GENERATED_PASSWORDS  1 = the passwords are generated random tokens: stored under a one-round hash

It prints what it changed (names only) and exits 0; 2 with one line on stderr when a setting is missing or a
password is shorter than MLflow's 12 characters; 1 with one line when the user store refuses. No password, and
no database URL, is ever printed.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

CONFIG_ENV = "MLFLOW_AUTH_CONFIG_PATH"
DATABASE_ENV = "DENSEFLOW_MLFLOW_AUTH_DB"
ADMIN_ENV = ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD")
READER_ENV = ("DENSEFLOW_MLFLOW_READER_USERNAME", "DENSEFLOW_MLFLOW_READER_PASSWORD")
# Users without a grant get this on every experiment and registered model: read, never write.
DEFAULT_PERMISSION = "READ"
MIN_PASSWORD = 12  # mlflow.utils.validation._validate_password
MIN_SCRUBBED = 8


class UsersError(Exception):
    """One line for the caller; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, repr=False)
class User:
    name: str
    password: str
    is_admin: bool

    def __repr__(self) -> str:  # never the password, whoever prints this
        return f"User({self.name!r}, admin={self.is_admin})"


def write_private(path: Path, text: str) -> None:
    """``text`` to ``path``, readable by this user only (mode 600 from its creation), replaced atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    os.chmod(tmp, 0o600)  # an older file of that name kept its mode through O_TRUNC
    os.replace(tmp, path)


def auth_ini(database_uri: str, admin_username: str) -> str:
    """The basic-auth app's configuration (the keys of mlflow/server/auth/basic_auth.ini). No admin password: the
    admin is created here before the server starts, and MLflow reads that setting only to create a missing admin."""
    settings = {
        "default_permission": DEFAULT_PERMISSION,
        "database_uri": database_uri,
        "admin_username": admin_username,
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
        "grant_default_workspace_access": "false",
    }
    if any("\n" in value or "\r" in value for value in settings.values()):
        raise UsersError("a setting holds a line break")
    # MLflow reads the file with configparser's default interpolation: a literal % is written %%.
    return "[mlflow]\n" + "".join(f"{key} = {value.replace('%', '%%')}\n" for key, value in settings.items())


def users_from_env(env: dict[str, str]) -> tuple[str, Path, list[User]]:
    missing = [key for key in (CONFIG_ENV, DATABASE_ENV, *ADMIN_ENV, *READER_ENV) if not env.get(key)]
    if missing:
        raise UsersError(f"missing settings: {', '.join(missing)}")
    users = [
        User(env[ADMIN_ENV[0]], env[ADMIN_ENV[1]], is_admin=True),
        User(env[READER_ENV[0]], env[READER_ENV[1]], is_admin=False),
    ]
    if users[0].name == users[1].name:
        raise UsersError(f"the admin and the read-only user have the same name ({users[0].name})")
    for user, (_, password_key) in zip(users, (ADMIN_ENV, READER_ENV), strict=True):
        if len(user.password) < MIN_PASSWORD:
            raise UsersError(f"{password_key} is shorter than MLflow's {MIN_PASSWORD} characters")
    return env[DATABASE_ENV], Path(env[CONFIG_ENV]), users


def scrub(text: str, secrets: list[str]) -> str:
    """``text`` without any of ``secrets`` and without the password of any URL in it."""
    # Shorter strings are left alone: "short" would turn "shorter" into "***er" and hide nothing worth hiding.
    for secret in sorted((item for item in secrets if len(item) >= MIN_SCRUBBED), key=len, reverse=True):
        text = text.replace(secret, "***")
    return re.sub(r"(\w[\w+.-]*://[^:/@\s]+:)[^@/\s]+@", r"\1***@", text)


def database_password(uri: str) -> str:
    try:
        return urlsplit(uri).password or ""
    except ValueError:
        return ""


# MLflow's basic-auth app checks the password on every request, against werkzeug's default scrypt hash: ~0.1 s of
# CPU each, 0.4 s measured on a busy 2-core stack, which made a retrain's few hundred tracking calls minutes slower.
# Key stretching protects passwords people choose; against a generated secret (deploy/stack.py's are 192-bit random
# tokens) it adds nothing, so those are stored as one salted PBKDF2-SHA256 round, a format check_password_hash reads.
GENERATED_ENV = "DENSEFLOW_MLFLOW_GENERATED_PASSWORDS"
GENERATED_SECRET_HASH = "pbkdf2:sha256:1"


def store_generated_hash(store, name: str, password: str) -> bool:  # noqa: ANN001 - MLflow's auth SqlAlchemyStore
    """Store ``password`` under the one-round hash unless it already is; whether it changed."""
    from mlflow.server.auth.db.models import SqlUser
    from werkzeug.security import check_password_hash, generate_password_hash

    with store.ManagedSessionMaker(read_only=False) as session:
        user = session.query(SqlUser).filter(SqlUser.username == name).one()
        if user.password_hash.startswith(GENERATED_SECRET_HASH + "$") and check_password_hash(
            user.password_hash, password
        ):
            return False
        user.password_hash = generate_password_hash(password, method=GENERATED_SECRET_HASH)
        return True


def sync_users(database_uri: str, users: list[User], generated: bool = False) -> list[str]:
    """Create the missing users, set each one's password and admin flag to the given ones; what changed. With
    ``generated`` (the passwords are random tokens), each is stored under the one-round hash."""
    # Imported here: the package reads MLFLOW_AUTH_CONFIG_PATH when it is first imported.
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore()
    store.init_db(database_uri)  # creates or migrates the user tables
    changes = []
    for user in users:
        if not store.has_user(user.name, use_primary=True):
            store.create_user(user.name, user.password, is_admin=user.is_admin)
            changes.append(f"created {'admin' if user.is_admin else 'read-only'} user {user.name}")
            continue
        if not store.authenticate_user(user.name, user.password, use_primary=True):
            store.update_user(user.name, password=user.password)
            changes.append(f"new password for {user.name}")
        if store.get_user(user.name).is_admin != user.is_admin:
            store.update_user(user.name, is_admin=user.is_admin)
            changes.append(f"{user.name} {'made' if user.is_admin else 'no longer'} admin")
    if generated:
        for user in users:
            store_generated_hash(store, user.name, user.password)
    store.engine.dispose()
    return changes


def main(env: dict[str, str] | None = None) -> int:
    env = dict(os.environ) if env is None else env
    secrets = [env.get(ADMIN_ENV[1], ""), env.get(READER_ENV[1], ""), database_password(env.get(DATABASE_ENV, ""))]
    try:
        database_uri, ini_path, users = users_from_env(env)
        write_private(ini_path, auth_ini(database_uri, users[0].name))
        os.environ[CONFIG_ENV] = str(ini_path)
        try:
            changes = sync_users(database_uri, users, generated=env.get(GENERATED_ENV) == "1")
        except Exception as err:  # the store's errors: a refused database, a failed migration
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise UsersError(f"the MLflow user store refused: {type(err).__name__}: {first}", code=1) from err
    except UsersError as err:
        print(f"mlflow_users: {scrub(str(err), secrets)}", file=sys.stderr)
        return err.code
    for change in changes:
        print(f"mlflow_users: {change}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
