"""The registry as a search replica reads it: resolve ``retriever@production`` to a version and the index published
for it, and download that index (and, when the version has no query tower, the model) from the version's run.

The logic of following an alias, the cache and its checks is :mod:`denseflow.model.serving.replica`; this module is
only the MLflow calls, with MLflow's failures sorted into the two kinds a replica treats differently: the server
answered that the thing does not exist (:class:`RegistryReferenceError`), or it did not answer as it should
(:class:`RegistryUnavailable`: the replica keeps serving its cache and reports ``stale``).
"""

from __future__ import annotations

import re
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from denseflow.model.index.build import PublishedIndexError
from denseflow.model.serving.replica import (
    INDEX_TAG_PREFIX,
    RegistryReferenceError,
    RegistryUnavailable,
    RegistryVersion,
)
from denseflow.registry.resolve import parse_reference

# Error codes with which the registry says "no such model, version or alias" (the SQL store and the REST API differ).
_MISSING = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND")
# MLflow's basic-auth app answers a user who is not an admin with 403, not 404, for a registered model that does not
# exist (it does not disclose which exist): the server answered, so this is no outage.
_DENIED = "PERMISSION_DENIED"
_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


def redacted(text: str) -> str:
    """``text`` without the ``user:password@`` of any URL in it: a tracking URI may carry credentials, and they
    must not reach a log line, ``/health`` or an error message."""
    return _USERINFO.sub("***@", text)


class MlflowVersionSource:
    """:class:`~denseflow.model.serving.replica.VersionSource` over MLflow's tracking server (or a local store).

    ``reference``: ``name@alias`` (followed as it moves), ``name/3`` (one version) or a bare alias; the index is the
    one the version's ``index.<index_name>`` tag names. MLflow's global tracking and registry URIs are used, as
    everywhere else in denseflow."""

    def __init__(self, reference: str, index_name: str = "default", client: MlflowClient | None = None) -> None:
        self.model, self._version, self._alias = parse_reference(reference)
        self.reference = f"{self.model}@{self._alias}" if self._alias else f"{self.model}/{self._version}"
        self.index_name = index_name
        self.client = client or MlflowClient()

    def where(self) -> str:
        return redacted(mlflow.get_tracking_uri())

    def resolve(self) -> RegistryVersion:
        try:
            if self._alias:
                found = self.client.get_model_version_by_alias(self.model, self._alias)
            else:
                found = self.client.get_model_version(self.model, str(self._version))
        except MlflowException as err:
            if err.error_code in _MISSING:
                raise RegistryReferenceError(
                    f"{self.reference}: no such {'alias' if self._alias else 'version'} in the registry at "
                    f"{self.where()}"
                ) from None
            if err.error_code == _DENIED:
                raise RegistryReferenceError(
                    f"{self.reference}: the registry at {self.where()} refused to read it (permission denied): no "
                    f"registered model {self.model}, or these credentials may not read it"
                ) from None
            raise self._unavailable(err) from err
        except Exception as err:  # connection refused, a timeout, a database gone: the server did not answer
            raise self._unavailable(err) from err
        tags = found.tags or {}
        return RegistryVersion(
            self.model,
            str(found.version),
            found.run_id or "",
            self.index_name,
            tags.get(INDEX_TAG_PREFIX + self.index_name),
        )

    def download_index(self, version: RegistryVersion, into: Path) -> Path:
        into.mkdir(parents=True, exist_ok=True)
        try:
            local = self.client.download_artifacts(version.run_id, version.artifact_path, str(into))
        except MlflowException as err:
            if err.error_code in _MISSING:
                raise PublishedIndexError(
                    f"{version.label}: {version.artifact_path} is not among run {version.run_id}'s artifacts"
                ) from None
            raise self._unavailable(err) from err
        folder = Path(local)
        if not folder.is_dir():
            raise PublishedIndexError(
                f"{version.label}: {version.artifact_path} of run {version.run_id} is not a folder"
            )
        return folder

    def download_model(self, version: RegistryVersion, into: Path) -> Path:
        into.mkdir(parents=True, exist_ok=True)
        try:
            local = mlflow.artifacts.download_artifacts(
                f"models:/{version.model}/{version.version}", dst_path=str(into)
            )
        except MlflowException as err:
            if err.error_code in _MISSING:
                raise PublishedIndexError(f"{version.label}: the registered model's files are not there") from None
            raise self._unavailable(err) from err
        found = sorted(Path(local).rglob("modules.json"), key=lambda path: len(path.parts))
        if not found:
            raise PublishedIndexError(f"{version.label}: the registered model is not a sentence-transformers folder")
        return found[0].parent

    def _unavailable(self, err: BaseException) -> RegistryUnavailable:
        reason = " ".join(str(err).split())[:300] or type(err).__name__
        return RegistryUnavailable(f"MLflow tracking server {self.where()} did not answer ({redacted(reason)})")
