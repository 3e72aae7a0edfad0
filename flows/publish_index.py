"""``publish_index``: encode the corpus with a registered model and publish its FAISS index.

resolve model → stage the corpus → (bf16 / int8 check against fp32) → plan shards of the documents the
per-document embedding cache lacks → BM25 over the corpus (once per corpus) → encode the shards (mapped)
→ build + verify from the cache → publish → log.

The shard mapping runs on whatever task runner the flow is given: Prefect's thread pool locally (one
shard at a time by default), or ``prefect_dask.DaskTaskRunner`` (a local cluster it starts, or an existing
scheduler) when ``runner.kind`` is ``dask``. The flow itself does not change.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from prefect import flow, unmapped
from prefect.futures import as_completed
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from tqdm.auto import tqdm

from denseflow.model.compiled import worth_compiling
from denseflow.model.config import DataConfig, EncodeConfig, PublishConfig, RunnerConfig, TrackingConfig
from denseflow.model.index.built import ModelToPublish
from denseflow.model.workspace import workspace_dir
from denseflow.tasks.publish import (
    PublishedVersion,
    build_and_verify,
    build_bm25,
    choose_precision,
    encode_shard,
    log_index_artifact,
    plan_shards_task,
    publish_version,
    resolve_model_version,
    stage_corpus_task,
)


@dataclass(frozen=True)
class PublishResult:
    """What one publication did: the version it published, with what, and how much it encoded."""

    published: PublishedVersion
    model: ModelToPublish
    documents: int
    documents_encoded: int
    documents_reused: int
    shards: int
    precision: str
    precision_fallback: str | None
    compiled: bool  # the shards ran the document encoder through torch.compile (where it passed its check)
    recall_at_10: float | None
    build_seconds: float
    mlflow_artifact: str | None

    @property
    def version(self) -> str:
        return self.published.version

    def summary(self) -> dict[str, object]:
        """Flat, JSON-ready: what ``denseflow index publish`` prints and retrain's summary records."""
        return {
            **asdict(self.published),
            "model": f"{self.model.name}/{self.model.version}" if self.model.version else self.model.model_dir,
            "documents": self.documents,
            "documents_encoded": self.documents_encoded,
            "documents_reused": self.documents_reused,
            "shards": self.shards,
            "precision": self.precision,
            "precision_fallback": self.precision_fallback,
            "compiled": self.compiled,
            "recall_at_10": self.recall_at_10,
            "build_seconds": self.build_seconds,
            "mlflow_artifact": self.mlflow_artifact,
            "mode": self.model.search.get("mode"),
            "hybrid": self.model.search.get("hybrid"),
        }


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
def publish_index(config: PublishConfig) -> PublishResult:
    workspace = workspace_dir(config.workspace)
    config = config.model_copy(update={"workspace": workspace})
    model = resolve_model_version(config)
    if config.encode.max_seq_length is None and model.served is not None:
        # Documents at the length the version was evaluated with, so the published figures are the registered ones.
        encode = config.encode.model_copy(update={"max_seq_length": model.served.document_max_seq_length})
        config = config.model_copy(update={"encode": encode})
    snapshot = stage_corpus_task(config, str(workspace / "encode"))
    cache_dir = str(workspace / "cache" / "embeddings")
    choice = choose_precision(model.model_dir, snapshot, config.encode, cache_dir)
    plan = plan_shards_task(snapshot, model.model_dir, choice.precision, config.encode, cache_dir)
    bm25_dir = build_bm25(snapshot, model.bm25(config.bm25.settings()))
    compiled = worth_compiling(config.encode.compile, choice.precision, plan.to_encode)
    futures = encode_shard.map(
        plan.shards,
        plan=unmapped(plan),
        model_dir=unmapped(model.model_dir),
        precision=unmapped(choice.precision),
        batch_size=unmapped(config.encode.batch_size),
        max_seq_length=unmapped(config.encode.max_seq_length),
        threads=unmapped(shard_threads(config.runner)),
        compiled=unmapped(compiled),
    )
    with tqdm(total=plan.to_encode, desc="encoding corpus", unit="doc", disable=not plan.shards) as bar:
        for future in as_completed(futures):
            bar.update(future.result())  # a failed shard stops the flow here, with its error

    built = build_and_verify(plan, model, config.index, choice, config.encode, bm25_dir)
    published = publish_version(built, model, str(workspace / "indexes"), config.index)
    artifact = log_index_artifact(published, model, plan, config)
    return PublishResult(
        published=published,
        model=model,
        documents=snapshot.documents,
        documents_encoded=plan.to_encode,
        documents_reused=plan.reused,
        shards=len(plan.shards),
        precision=choice.precision,
        precision_fallback=choice.fallback,
        compiled=compiled,
        recall_at_10=built.recall_at_10,
        build_seconds=built.build_seconds,
        mlflow_artifact=artifact,
    )


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


def run_publish(config: PublishConfig) -> PublishResult:
    """Run ``publish_index`` on the task runner ``config.runner`` asks for."""
    return publish_index.with_options(task_runner=make_task_runner(config.runner))(config)
