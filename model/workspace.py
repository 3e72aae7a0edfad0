"""Where local state lives: one workspace folder (MLflow store, mined data, checkpoints, indexes, caches)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

WORKSPACE_ENV = "DENSEFLOW_HOME"


def workspace_dir(override: Path | str | None = None) -> Path:
    """``override``, else ``$DENSEFLOW_HOME``, else ``./.denseflow``; created if missing."""
    folder = Path(override or os.environ.get(WORKSPACE_ENV) or ".denseflow").expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


LOCKS_FOLDER = "locks"
# Long enough for a gate that re-evaluates production on a loaded machine; a person waiting is told who holds it.
DEFAULT_LOCK_TIMEOUT_SECONDS = 1800.0


class LockTimeout(TimeoutError):
    """Another process held the workspace lock for longer than the timeout."""


def tracking_uri(configured: str | None, workspace: Path | str | None = None) -> str:
    """The MLflow tracking URI every command uses: the configured one, else ``$MLFLOW_TRACKING_URI``, else SQLite in
    the workspace. Free of MLflow and Prefect, so the CLI's pre-flight checks and a replica resolve it cheaply."""
    if configured:
        return configured
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{workspace_dir(workspace) / 'mlflow.db'}"


def lock_path(workspace: Path | str, name: str) -> Path:
    """``<workspace>/locks/<name>.lock``; ``name`` may hold only letters, digits, ``._-``."""
    safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name)
    folder = Path(workspace) / LOCKS_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{safe}.lock"


@contextmanager
def workspace_lock(workspace: Path | str, name: str, timeout: float = DEFAULT_LOCK_TIMEOUT_SECONDS) -> Iterator[Path]:
    """An exclusive lock on ``name`` among every process (and thread) sharing ``workspace``.

    An OS file lock (``flock``): the kernel drops it when its holder dies, even by kill -9, so a crash never
    leaves the workspace locked. Works on a shared workspace on one machine or a file system with working
    ``flock`` (local disks, NFSv4); it says nothing about processes using another workspace.
    """
    from filelock import FileLock, Timeout

    path = lock_path(workspace, name)
    lock = FileLock(str(path), timeout=timeout, thread_local=False)
    try:
        lock.acquire()
    except Timeout as err:
        raise LockTimeout(f"another denseflow process has held {path} for over {timeout:g} s") from err
    try:
        yield path
    finally:
        lock.release()
