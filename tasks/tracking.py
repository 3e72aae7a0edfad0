"""MLflow wiring shared by every task: where the store is, which experiment, and run lifecycle."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import ParamSpec, TypeVar

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from prefect import get_run_logger
from prefect.exceptions import MissingContextError

from denseflow.model.config import TrackingConfig, flatten
from denseflow.model.context import RunContext
from denseflow.model.evaluation.choice import Choice
from denseflow.model.workspace import tracking_uri as resolve_tracking_uri
from denseflow.model.workspace import workspace_dir, workspace_lock
from denseflow.registry.keys import metric_key

P = ParamSpec("P")
R = TypeVar("R")


class TrackingServerUnreachable(RuntimeError):
    """The MLflow tracking server stopped answering (after MLflow's own retries): one line naming it."""


def _connection_error(err: BaseException) -> BaseException | None:
    """The connection failure behind an MLflow exception: MLflow raises its own inside ``except`` (implicit
    chaining), so the requests/urllib3 error is in the context chain, not the message alone."""
    import requests

    seen = err
    while seen is not None:
        if isinstance(seen, requests.exceptions.ConnectionError | ConnectionError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def names_the_server(function: Callable[P, R]) -> Callable[P, R]:
    """A tracking call that fails because the server is down raises ``TrackingServerUnreachable`` naming the
    tracking URI, instead of MLflow's multi-line urllib3 message about one endpoint."""

    @functools.wraps(function)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return function(*args, **kwargs)
        except MlflowException as err:
            cause = _connection_error(err)
            if cause is None:
                raise
            reason = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
            if "Connection refused" in str(cause):
                reason = "connection refused"
            raise TrackingServerUnreachable(
                f"MLflow tracking server {mlflow.get_tracking_uri()} is unreachable ({reason})"
            ) from err

    return wrapped


def tracking_uri(config: TrackingConfig, workspace: Path) -> str:
    """The configured URI, else ``$MLFLOW_TRACKING_URI``, else SQLite in the workspace (model/workspace.py's rule)."""
    return resolve_tracking_uri(config.tracking_uri, workspace)


# Workspace lock held while the store is opened (and, the first time, created) and the experiment looked up.
STORE_LOCK = "mlflow-store"
STORE_LOCK_TIMEOUT_SECONDS = 600.0


def configure_tracking(config: TrackingConfig, workspace: Path | None = None) -> str:
    """Point MLflow at the store and make sure the experiment exists; returns the tracking URI.

    Opening a SQLite store the first time runs MLflow's schema migrations, and two processes doing that at once
    collide (``table latest_metrics already exists``); two processes creating the experiment at once collide
    too. Both happen under the workspace lock ``locks/mlflow-store.lock``, so the first concurrent runs on a
    fresh workspace take turns here (milliseconds once the store exists).
    """
    workspace = workspace_dir(workspace)
    uri = tracking_uri(config, workspace)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    with workspace_lock(workspace, STORE_LOCK, timeout=STORE_LOCK_TIMEOUT_SECONDS):
        client = MlflowClient(uri)  # opens the tracking store: creates the schema on a fresh SQLite file
        client.search_registered_models(max_results=1)  # the registry store too, which MLflow opens lazily
        if client.get_experiment_by_name(config.experiment) is None:
            # A local store keeps artifacts in the workspace; a server decides for itself.
            location = (workspace / "mlartifacts").as_uri() if uri.startswith(("sqlite:", "file:", "/")) else None
            client.create_experiment(config.experiment, artifact_location=location)
    mlflow.set_experiment(config.experiment)
    return uri


def source_tags(tags: dict[str, str]) -> dict[str, str]:
    """``tags`` with the context tags the fluent ``mlflow.start_run`` sets (user, source name and type), the command
    line as the source, and the git commit of denseflow's own code when it runs from a checkout."""
    import subprocess
    import sys

    from mlflow.tracking.context.registry import resolve_tags

    resolved = resolve_tags(tags)
    resolved["mlflow.source.name"] = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:500] or "denseflow"
    package = Path(__file__).resolve().parent
    commit = ""
    try:
        # Only a checkout of denseflow itself: an installed wheel inside someone's repository is not that commit.
        root = subprocess.run(
            ["git", "-C", str(package), "rev-parse", "--show-toplevel"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
        if root and Path(root).resolve() == package.parent:
            commit = subprocess.run(
                ["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
            ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    if commit:
        resolved["mlflow.source.git.commit"] = commit
    return resolved


@names_the_server
def start_tracking_run(
    config, flow_run_id: str | None, run_name: str | None = None, parent_run_id: str | None = None
) -> str:  # noqa: ANN001 - any flow config with .tracking
    """Create the flow's MLflow run, log the whole configuration as params, and return its id."""
    client = MlflowClient()
    experiment = client.get_experiment_by_name(config.tracking.experiment)
    tags = {"prefect.flow_run_id": flow_run_id or "none"}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(experiment.experiment_id, run_name=run_name, tags=source_tags(tags))
    params = flatten(config)
    items = list(params.items())
    for start in range(0, len(items), 100):
        batch = [mlflow.entities.Param(key, value[:6000]) for key, value in items[start : start + 100]]
        client.log_batch(run.info.run_id, params=batch)
    return run.info.run_id


def run_url(run_id: str, ui_address: str = "http://127.0.0.1:5000") -> str:
    """Where the run's page is: on the tracking server itself, or on ``denseflow ui`` for a local store."""
    uri = mlflow.get_tracking_uri()
    experiment = MlflowClient().get_run(run_id).info.experiment_id
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else ui_address
    return f"{base}/#/experiments/{experiment}/runs/{run_id}"


def end_tracking_run(run_id: str, status: str = "FINISHED") -> None:
    """Mark the run ended. A run ending in failure because the server is gone stays RUNNING there (never
    FINISHED): the error that failed it is the one worth raising, not a second one from this call."""
    try:
        names_the_server(MlflowClient().set_terminated)(run_id, status=status)
    except TrackingServerUnreachable as err:
        if status == "FINISHED":
            raise
        run_logger().warning("MLflow run %s not marked %s: %s", run_id, status, err)


@contextlib.contextmanager
def tracking_run(run_id: str) -> Iterator[str]:
    """The block a flow's MLflow run covers: ended FINISHED when the block completes, FAILED when anything escapes it
    (an error, a cancellation, Ctrl-C), which is then raised again."""
    try:
        yield run_id
    except BaseException:
        end_tracking_run(run_id, "FAILED")
        raise
    end_tracking_run(run_id)


@names_the_server
def log_metrics(run_id: str, metrics: dict[str, float], prefix: str = "", step: int = 0) -> None:
    client = MlflowClient()
    batch = [
        mlflow.entities.Metric(metric_key(name, prefix), float(value), int(time.time() * 1000), step)
        for name, value in metrics.items()
    ]
    client.log_batch(run_id, metrics=batch)


METRIC_BATCH = 1000  # the most metrics MLflow takes in one log_batch


@names_the_server
def log_metric_history(run_id: str, key: str, points: Iterable[tuple[int, float]]) -> None:
    """One metric's values by step (a loss curve, a sweep over positions), charted by step in the UI."""
    now = int(time.time() * 1000)
    batch = [mlflow.entities.Metric(key, float(value), now, int(step)) for step, value in points]
    client = MlflowClient()
    for start in range(0, len(batch), METRIC_BATCH):
        client.log_batch(run_id, metrics=batch[start : start + METRIC_BATCH])


@names_the_server
def set_tags(run_id: str, tags: Mapping[str, str]) -> None:
    """Tags on the run, in order."""
    client = MlflowClient()
    for key, value in tags.items():
        client.set_tag(run_id, key, value)


@names_the_server
def set_version_tags(registered_model: str, version: str, tags: Mapping[str, str]) -> None:
    """Tags on a registered model version (its figures, the index published for it), in order."""
    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(registered_model, str(version), key, value)


@names_the_server
def set_version_description(registered_model: str, version: str, description: str) -> None:
    """The version's description in the registry (its model card's head)."""
    MlflowClient().update_model_version(registered_model, str(version), description=description)


@names_the_server
def run_metrics(run_id: str) -> dict[str, float]:
    """The latest value of every metric a run logged."""
    return dict(MlflowClient().get_run(run_id).data.metrics)


@names_the_server
def version_tags(registered_model: str, version: str) -> dict[str, str]:
    """A model version's tags."""
    return dict(MlflowClient().get_model_version(registered_model, version).tags or {})


@names_the_server
def set_version_alias(registered_model: str, alias: str, version: str) -> None:
    """Point ``alias`` at the version (``candidate``; production moves only through registry/aliases.py, which
    records the move and guards against a race)."""
    MlflowClient().set_registered_model_alias(registered_model, alias, str(version))


@names_the_server
def log_artifact(run_id: str, path: Path, artifact_path: str | None = None) -> None:
    """A file, or a folder's files, under ``artifact_path`` of the run's artifacts."""
    client = MlflowClient()
    if Path(path).is_dir():
        client.log_artifacts(run_id, str(path), artifact_path)
    else:
        client.log_artifact(run_id, str(path), artifact_path)


@names_the_server
def start_record_run(experiment: str, run_name: str) -> str:
    """A run in ``experiment`` (created when missing) recording a one-off result, such as ``denseflow compare``'s:
    no configuration params, no flow run; end it with :func:`end_tracking_run`."""
    client = MlflowClient()
    found = client.get_experiment_by_name(experiment) or client.get_experiment(client.create_experiment(experiment))
    return client.create_run(found.experiment_id, run_name=run_name).info.run_id


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """Prefect's run logger inside a flow or task run; a plain logger when a task is called directly (tests)."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("denseflow")


@names_the_server
def log_choice(context: RunContext, choice: Choice, prefix: str = "") -> None:
    """One choice made on evidence (model/evaluation/choice.py): tags ``choice.<prefix><name>.{prior,dev_winner,
    used,p_value}``, and a line in the run's ``choices.jsonl`` artifact (every choice of the run, whole)."""
    key = f"choice.{prefix}{choice.name}"
    client = MlflowClient()
    for field in ("prior", "dev_winner", "used"):
        client.set_tag(context.run_id, f"{key}.{field}", str(getattr(choice, field))[:250])
    client.set_tag(context.run_id, f"{key}.p_value", "none" if choice.p_value is None else f"{choice.p_value:.4f}")
    record = context.run_dir / "choices.jsonl"
    record.parent.mkdir(parents=True, exist_ok=True)
    with record.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"key": f"{prefix}{choice.name}", **choice.as_dict()}) + "\n")
    client.log_artifact(context.run_id, str(record))
    run_logger().info("choice %s%s: %s (%s)", prefix, choice.name, choice.used, choice.reason)


@names_the_server
def log_per_query_table(run_id: str, per_query: dict[str, dict[str, float]], artifact_file: str) -> None:
    """``{metric: {query_id: value}}`` as an MLflow table (one row a query), so the UI's artifact view and
    ``mlflow.load_table`` show which queries a system wins and loses."""
    queries = sorted(next(iter(per_query.values()), {}))
    data = {"query_id": queries} | {metric: [values.get(q) for q in queries] for metric, values in per_query.items()}
    MlflowClient().log_table(run_id, data=data, artifact_file=artifact_file)


@names_the_server
def log_dataset_inputs(run_id: str, source: str, digest: str, contexts: dict[str, str]) -> None:
    """The dataset as the run's input (the UI's Datasets panel), once per context (``training``, ``evaluation``),
    with its content digest and the split each context read; MLflow's public entities, not its fluent internals."""
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "can be interpreted in multiple ways": a local path either way
        described = MetaDataset(resolve_dataset_source(source), name=Path(source).name, digest=digest).to_dict()
    # One dataset entry per split: MLflow keeps one input per (name, digest), whatever its context.
    inputs = [
        DatasetInput(
            Dataset(f"{described['name']}/{split}", digest, described["source_type"], described["source"]),
            tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)],
        )
        for context, split in contexts.items()
    ]
    MlflowClient().log_inputs(run_id, datasets=inputs)
