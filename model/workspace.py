"""Where local state lives: one workspace folder (MLflow store, mined data, checkpoints, indexes, caches)."""

from __future__ import annotations

import os
from pathlib import Path

WORKSPACE_ENV = "DENSEFLOW_HOME"


def workspace_dir(override: Path | str | None = None) -> Path:
    """``override``, else ``$DENSEFLOW_HOME``, else ``./.denseflow``; created if missing."""
    folder = Path(override or os.environ.get(WORKSPACE_ENV) or ".denseflow").expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return folder
