"""What the stack tests share: the path of deploy/stack.py and importing it as a module (it is a script, not in
the package)."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from tests.conftest import REPO

STACK = REPO / "deploy" / "stack.py"


def load_stack_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_stack", STACK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
