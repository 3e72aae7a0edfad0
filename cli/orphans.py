"""Child servers die with the ``denseflow`` command that started them, even when it is killed with -9.

Prefect 3 runs flows without a configured API against a temporary server, a ``python -m uvicorn`` child it starts
with ``subprocess.Popen`` (``prefect.server.api.server.SubprocessASGIServer``) and stops from an ``atexit``
hook. SIGTERM skips ``atexit`` (Python's default action is to die), and kill -9 skips everything: the server
(~250 MB) lived on. Two defences:

- ``install_signal_handlers``: SIGTERM (and SIGHUP) raise ``SystemExit`` in the main thread, so the flow's
  ``except`` blocks mark the MLflow run FAILED and ``atexit`` stops the server.
- ``guard_prefect_server``: the server is started through this module (``python -m denseflow.cli.orphans
  <parent pid> uvicorn ...``), which runs uvicorn in-process plus a watcher thread; when the parent is gone
  (the child's parent pid changes: it was re-parented), the watcher sends the server SIGTERM, then exits hard
  after a grace period. This needs no help from the parent, so it covers kill -9. (``PR_SET_PDEATHSIG`` is not
  used: it fires when the *thread* that started the child exits, and Prefect may start it from any thread.)

The guard rewrites only Popen calls of the form ``[python, -m, uvicorn, ...]`` made by Prefect's server
module; anything else passes through untouched. If a future Prefect starts its server another way, the guard
does nothing (``guard_prefect_server`` returns False) and only the signal handlers remain.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
import threading
import time
from types import FrameType, ModuleType
from typing import Any

POLL_SECONDS = 0.5
GRACE_SECONDS = 10.0
GUARD_MODULE = "denseflow.cli.orphans"


def guarded_command(args: list[str], parent_pid: int) -> list[str]:
    """``[python, -m, uvicorn, ...]`` → ``[python, -m, denseflow.cli.orphans, <parent pid>, uvicorn, ...]``."""
    if len(args) >= 3 and args[1] == "-m" and args[2] != GUARD_MODULE:
        return [args[0], "-m", GUARD_MODULE, str(parent_pid), *args[2:]]
    return list(args)


class _GuardedSubprocess:
    """Stands in for the ``subprocess`` module inside Prefect's server module only."""

    def __init__(self, real: ModuleType) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def Popen(self, args: Any, *rest: Any, **kwargs: Any) -> Any:  # noqa: N802 - mirrors subprocess.Popen
        if isinstance(args, list) and args[1:3] == ["-m", "uvicorn"]:
            args = guarded_command(args, os.getpid())
        return self._real.Popen(args, *rest, **kwargs)


def guard_prefect_server() -> bool:
    """Make Prefect's temporary API server exit when this process dies; False when Prefect's layout changed."""
    try:
        from prefect.server.api import server as module
    except ImportError:
        return False
    if not hasattr(module, "SubprocessASGIServer") or not hasattr(module, "subprocess"):
        return False
    if not isinstance(module.subprocess, _GuardedSubprocess):
        module.subprocess = _GuardedSubprocess(module.subprocess)
    return True


def _exit_on_signal(signum: int, _: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def install_signal_handlers() -> None:
    """SIGTERM/SIGHUP end the command like Ctrl-C would: cleanup (``finally``, ``atexit``) runs."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) in (signal.SIG_DFL, None):
            signal.signal(signum, _exit_on_signal)


def _watch(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(POLL_SECONDS)
    os.kill(os.getpid(), signal.SIGTERM)  # uvicorn shuts down cleanly on SIGTERM
    time.sleep(GRACE_SECONDS)
    os._exit(1)


def main(argv: list[str]) -> None:
    """``python -m denseflow.cli.orphans <parent pid> <module> [args...]``: run ``module`` until the parent dies."""
    if len(argv) < 2 or not argv[0].isdigit():
        sys.exit("usage: python -m denseflow.cli.orphans <parent pid> <module> [args...]")
    parent_pid, module = int(argv[0]), argv[1]
    if os.getppid() != parent_pid:  # the parent died before we started
        sys.exit(1)
    threading.Thread(target=_watch, args=(parent_pid,), name="orphan-guard", daemon=True).start()
    sys.argv = [module, *argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
