"""Resolve a model reference (``retriever@production``, ``retriever/3``, ``models:/retriever@candidate``) to a
version and a local folder, so every loader honours aliases however they were moved (by denseflow or by a person
in the MLflow UI)."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
from denseflow.model.workspace import workspace_dir
from denseflow.registry.keys import CANDIDATE, PRODUCTION
from mlflow.tracking import MlflowClient


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    version: str
    run_id: str
    local_dir: Path

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def parse_reference(reference: str, default_name: str = "retriever") -> tuple[str, str | None, str | None]:
    """``(name, version, alias)`` from ``name@alias``, ``name/3``, ``models:/...`` or a bare alias/version."""
    ref = reference.removeprefix("models:/")
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return name or default_name, None, alias
    if "/" in ref:
        name, version = ref.split("/", 1)
        return name, version, None
    if ref.isdigit():
        return default_name, ref, None
    if ref in (CANDIDATE, PRODUCTION):
        return default_name, None, ref
    return ref, None, PRODUCTION


def resolve_model(reference: str, workspace: Path | None = None, default_name: str = "retriever") -> ResolvedModel:
    """Look the reference up in the registry *now* and return a local copy of that exact version."""
    name, version, alias = parse_reference(reference, default_name)
    client = MlflowClient()
    found = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    local_dir = workspace_dir(workspace) / "models" / name / f"v{found.version}"
    if not (local_dir / "modules.json").is_file():
        with tempfile.TemporaryDirectory(dir=workspace_dir(workspace)) as tmp:
            downloaded = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{found.version}", dst_path=tmp))
            model_root = next(path.parent for path in downloaded.rglob("modules.json"))
            local_dir.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tmp) / "staged"
            shutil.copytree(model_root, staging)
            staging.replace(local_dir)
    return ResolvedModel(name=name, version=str(found.version), run_id=found.run_id, local_dir=local_dir)
