"""Resolve a model reference (``retriever@production``, ``retriever/3``, ``models:/retriever@candidate``) to a
version and a local folder, so every loader honours aliases however they were moved (by denseflow or by a person
in the MLflow UI)."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from denseflow.model.workspace import workspace_dir
from denseflow.registry.keys import CANDIDATE, PRODUCTION


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


def trained_dataset_dir(name: str, version: str, workspace: Path | None = None) -> tuple[Path | None, str]:
    """The dataset ``version`` was trained on, as ``retrain`` ingested it: ``<workspace>/runs/<run id>/data``.

    Returned only when it is there and its fingerprint is the run's ``dataset_fingerprint`` tag (the folder may be
    gone, from another workspace, or overwritten); otherwise ``(None, why)`` so the caller can say what it falls
    back to. The second item always says which corpus this is.
    """
    from denseflow.model.data.assemble import dataset_fingerprint, read_skip_above
    from denseflow.model.data.beir import load_beir
    from denseflow.model.data.ingest import beir_splits
    from denseflow.model.data.io import DataError, RejectLog

    client = MlflowClient()
    found = client.get_model_version(name, version)
    if not found.run_id:
        return None, f"{name} version {version} has no MLflow run"
    folder = workspace_dir(workspace) / "runs" / found.run_id / "data"
    expected = client.get_run(found.run_id).data.tags.get("dataset_fingerprint") or found.tags.get(
        "dataset_fingerprint"
    )
    if expected is None:
        return None, f"run {found.run_id} of {name} version {version} has no dataset_fingerprint tag"
    try:
        actual = dataset_fingerprint(load_beir(folder, beir_splits(folder), RejectLog()), read_skip_above(folder))
    except DataError as err:
        return None, f"the dataset {name} version {version} was trained on is not readable in this workspace ({err})"
    if actual != expected:
        return None, f"{folder} has fingerprint {actual}, not the {expected} {name} version {version} was trained on"
    return folder, f"the corpus {name} version {version} was trained on ({folder}, fingerprint {expected})"
