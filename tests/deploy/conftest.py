"""What the stack tests share: the path of deploy/stack.py and importing it as a module (it is a script, not in
the package)."""

from __future__ import annotations

import contextlib
import http.server
import importlib.util
import sys
import threading
from collections.abc import Iterator
from types import ModuleType

from tests.conftest import REPO

STACK = REPO / "deploy" / "stack.py"


def load_stack_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_stack", STACK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def fake_http_server(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[int]:
    """``handler`` answering on a free loopback port (yielded) from a thread, for as long as the block runs."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
