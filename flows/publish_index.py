"""``publish_index``: encode the corpus with a registered model and publish its FAISS index.

resolve model → plan shards → (bf16 / int8 check against fp32) → reuse cached embeddings → encode the missing shards (mapped)
→ build + verify → publish → log.

The shard mapping runs on whatever task runner the flow is given: Prefect's thread pool locally (one
shard at a time by default), or ``prefect_dask.DaskTaskRunner`` (a local cluster it starts, or an existing
scheduler) when ``runner.kind`` is ``dask``. The flow itself does not change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, unmapped
from prefect.futures import as_completed
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from tqdm.auto import tqdm

from denseflow.model.config import DataConfig, EncodeConfig, PublishConfig, RunnerConfig, TrackingConfig
from denseflow.model.workspace import workspace_dir
from denseflow.tasks.publish import (
    build_and_verify,
    choose_precision,
    encode_shard,
    log_index_artifact,
    plan_shards,
    publish_version,
    resolve_model_version,
    reuse_cached_embeddings,
)


def make_task_runner(runner: RunnerConfig) -> TaskRunner:
    """Prefect's thread pool capped at ``local_workers``; for ``dask``, a local cluster of processes or one joined.

    The cap matters: Prefect's default pool would start every shard at once, and concurrent torch
    encodes on the same cores run slower together than one after another.
    """
    if runner.kind != "dask":
        return ThreadPoolTaskRunner(max_workers=runner.local_workers)
    from prefect_dask import DaskTaskRunner

    if runner.dask_address:
        return DaskTaskRunner(address=runner.dask_address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": runner.dask_workers,
            "threads_per_worker": runner.dask_threads_per_worker,
            "processes": True,
            "dashboard_address": None,
        }
    )


def shard_threads(runner: RunnerConfig) -> int | None:
    """Intra-op threads per shard: ``runner.torch_threads``, or a Dask worker's own thread count, or torch's default."""
    if runner.torch_threads:
        return runner.torch_threads
    return runner.dask_threads_per_worker if runner.kind == "dask" else None


@flow(name="publish_index")
def publish_index(config: PublishConfig) -> dict[str, Any]:
    workspace = workspace_dir(config.workspace)
    config = config.model_copy(update={"workspace": workspace})
    model = resolve_model_version(config)
    plan = plan_shards(config, model, str(workspace / "encode"))
    choice = choose_precision(model["model_dir"], plan, config.encode)
    encode_info = {**choice, "max_seq_length": config.encode.max_seq_length, "batch_size": config.encode.batch_size}
    reused = reuse_cached_embeddings(
        plan,
        model["model_dir"],
        choice["precision"],
        config.encode.max_seq_length,
        str(workspace / "cache" / "embeddings"),
    )

    futures = encode_shard.map(
        plan["shards"],
        model_dir=unmapped(model["model_dir"]),
        precision=unmapped(choice["precision"]),
        batch_size=unmapped(config.encode.batch_size),
        max_seq_length=unmapped(config.encode.max_seq_length),
        threads=unmapped(shard_threads(config.runner)),
    )
    counts = {future.task_run_id: shard["count"] for future, shard in zip(futures, plan["shards"], strict=True)}
    with tqdm(total=plan["documents"], desc="encoding corpus", unit="doc") as bar:
        for future in as_completed(futures):
            future.result()  # a failed shard stops the flow here, with its error
            bar.update(counts[future.task_run_id])
    outputs = [future.result() for future in futures]

    built = build_and_verify(plan, outputs, model, config.index, encode_info)
    published = publish_version(built, model, str(workspace / "indexes"), config.index)
    artifact = log_index_artifact(published, model, config)
    return {
        **published,
        "model": model,
        "documents": plan["documents"],
        "shards": len(outputs),
        "shards_reused": reused,
        "embeddings": outputs,
        "precision": choice["precision"],
        "precision_fallback": choice["fallback"],
        "recall_at_10": built["recall_at_10"],
        "build_seconds": built["build_seconds"],
        "mlflow_artifact": artifact,
    }


def publish_config_for(
    workspace: Path, dataset_dir: Path, model: str, tracking: TrackingConfig, max_seq_length: int | None = None
) -> PublishConfig:
    """The configuration ``retrain`` publishes with after a promotion: its own workspace, ingested corpus and store."""
    return PublishConfig(
        workspace=workspace,
        model=model,
        data=DataConfig(path=dataset_dir),
        encode=EncodeConfig(max_seq_length=max_seq_length),
        tracking=tracking,
    )


def run_publish(config: PublishConfig) -> dict[str, Any]:
    """Run ``publish_index`` on the task runner ``config.runner`` asks for."""
    return publish_index.with_options(task_runner=make_task_runner(config.runner))(config)
