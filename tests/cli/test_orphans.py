"""Prefect's temporary API server dies with the denseflow command, even on kill -9 (issue 11, item 5)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from denseflow.cli import orphans

PARENT = """
import os, subprocess, sys, time
child = subprocess.Popen(
    [sys.executable, "-m", "denseflow.cli.orphans", str(os.getpid()), "http.server", "0", "--bind", "127.0.0.1"],
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
)
print(child.pid, flush=True)
time.sleep(300)
"""


def alive(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    try:
        state = next(line for line in status.read_text().splitlines() if line.startswith("State:"))
    except (FileNotFoundError, ProcessLookupError):
        return False
    return " Z " not in state and "zombie" not in state


def test_guarded_child_exits_when_its_parent_is_killed_with_9():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    try:
        time.sleep(1.0)
        assert alive(child)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 20
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive(child), "the guarded child outlived its killed parent"
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)


def test_only_prefects_uvicorn_command_is_rewritten(monkeypatch):
    seen = []

    class FakeSubprocess:
        PIPE = -1

        @staticmethod
        def Popen(args, *rest, **kwargs):  # noqa: N802
            seen.append(args)

    shim = orphans._GuardedSubprocess(FakeSubprocess)
    shim.Popen(["/py", "-m", "uvicorn", "--app-dir", "x"])
    shim.Popen(["/py", "-m", "other"])
    shim.Popen("echo hi", shell=True)
    assert seen[0] == ["/py", "-m", "denseflow.cli.orphans", str(os.getpid()), "uvicorn", "--app-dir", "x"]
    assert seen[1:] == [["/py", "-m", "other"], "echo hi"] and shim.PIPE == -1


def test_prefects_server_module_is_guarded():
    from prefect.server.api import server

    assert orphans.guard_prefect_server() and orphans.guard_prefect_server()  # idempotent
    assert isinstance(server.subprocess, orphans._GuardedSubprocess)
    assert server.subprocess.Popen.__func__ is orphans._GuardedSubprocess.Popen


def test_sigterm_becomes_systemexit_so_atexit_runs(tmp_path):
    marker = tmp_path / "cleaned"
    script = f"""
import atexit, pathlib, time
from denseflow.cli.orphans import install_signal_handlers
install_signal_handlers()
atexit.register(lambda: pathlib.Path({str(marker)!r}).write_text("yes"))
print("ready", flush=True)
time.sleep(60)
"""
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 128 + signal.SIGTERM
    assert marker.read_text() == "yes"
