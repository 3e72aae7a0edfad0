"""Publish tasks: resolve the model, stage the corpus, judge the precision, encode what the cache lacks in shards,
build and verify the index, publish, log.

The work is in :mod:`denseflow.model.index.publication` and :mod:`denseflow.model.index.built`; these tasks wrap it with Prefect (retries, names,
mapping) and logging. They hand each other paths and frozen dataclasses, never models or indexes, so Prefect can
hash inputs and a Dask worker on another machine can run any shard given a shared filesystem. Vectors live in the
per-document embedding cache: a retried or re-run publication encodes only documents it has no vector for.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task

from denseflow.model.compiled import compiled_encoder
from denseflow.model.config import EncodeConfig, IndexConfig, PublishConfig
from denseflow.model.data.beir import (
    RejectLog,
    bundled_scifact_dir,
    corpus_fingerprint,
    find_file,
    read_corpus,
    read_queries,
)
from denseflow.model.encoder import (
    cached_encoder,
    corpus_cache,
    document_encoder_fingerprint,
    encode,
    resolve_precision,
)
from denseflow.model.index.bm25 import BM25Settings
from denseflow.model.index.built import (
    ModelToPublish,
    build_verified_index,
    built_query_tower,
    export_build_query_tower,
    read_build,
    write_build,
)
from denseflow.model.index.documents import DOCS_FILE
from denseflow.model.index.publication import (
    CorpusSnapshot,
    PrecisionChoice,
    PublishPlan,
    Shard,
    decide_precision,
    plan_shards,
    read_shard,
    snapshot_bm25,
    stage_corpus,
)
from denseflow.model.index.store import (
    BM25_FOLDER,
    DOC_IDS_FILE,
    INDEX_FILE,
    MANIFEST,
    QUERY_TOWER_FOLDER,
    publish,
    search_settings,
)
from denseflow.registry.keys import HYBRID_METHOD_TAG, HYBRID_WEIGHT_TAG, SERVED_MODE_TAG
from denseflow.registry.tags import served_record
from denseflow.tasks.tracking import (
    configure_tracking,
    log_artifact,
    log_metrics,
    run_logger,
    set_version_tags,
    version_tags,
)


@dataclass(frozen=True)
class BuiltIndex:
    """An index built and verified in a private folder, ready to publish."""

    build_dir: str
    recall_at_10: float | None
    build_seconds: float
    documents_file: str
    bm25_dir: str


@dataclass(frozen=True)
class PublishedVersion:
    name: str
    version: str
    path: str
    count: int


# ------------------------------------------------------------------------------------------ model


@task(name="resolve-model", retries=2, retry_delay_seconds=5)
def resolve_model_version(config: PublishConfig) -> ModelToPublish:
    """The model ``config.model`` names *now*.

    A registry reference (``retriever@production``, ``retriever/3``) is looked up in MLflow and
    downloaded; an existing folder is used as is (no registry identity, so no run to log to).
    """
    folder = Path(config.model).expanduser()
    if folder.is_dir():
        return ModelToPublish(folder.name, None, None, str(folder.resolve()), published_search(config.index, {}))
    from denseflow.registry.resolve import resolve_model

    configure_tracking(config.tracking, config.workspace)
    resolved = resolve_model(config.model, config.workspace, default_name=config.tracking.registered_model)
    run_logger().info("model %s resolved to %s (run %s)", config.model, resolved.uri, resolved.run_id)
    tags = version_tags(resolved.name, resolved.version)
    search = published_search(config.index, tags)
    return ModelToPublish(
        resolved.name, resolved.version, resolved.run_id, str(resolved.local_dir), search, served_record(tags)
    )


def published_search(index_config: IndexConfig, tags: dict[str, str]) -> dict[str, Any]:
    """The manifest's ``search`` section: the config's choice, else the version's tags (retrain records the
    served mode and the dev-tuned fusion as ``served.mode``, ``hybrid.weight``, ``hybrid.method``), else
    hybrid at 0.5 convex. A tag outside the allowed values fails here, before anything is encoded."""
    weight = tags.get(HYBRID_WEIGHT_TAG)
    try:
        weight_value = float(weight) if weight is not None else None
    except ValueError as err:
        raise ValueError(f"model version tag hybrid.weight={weight!r} is not a number") from err
    return search_settings(
        index_config.search_mode or tags.get(SERVED_MODE_TAG),
        index_config.fusion_weight if index_config.fusion_weight is not None else weight_value,
        index_config.fusion_method or tags.get(HYBRID_METHOD_TAG),
        index_config.fusion_depth,
    )


# ------------------------------------------------------------------------------------------ corpus


@task(name="stage-corpus")
def stage_corpus_task(config: PublishConfig, work_root: str) -> CorpusSnapshot:
    """Read the corpus once; its ids, content hashes, stored documents and sample queries, staged per fingerprint."""
    folder = Path(config.data.path or bundled_scifact_dir())
    rejects = RejectLog()
    corpus = read_corpus(find_file(folder, "corpus.jsonl"), rejects)
    if rejects:
        run_logger().warning("corpus %s: %d rows rejected %s", folder, len(rejects), rejects.counts())
    try:
        queries = list(read_queries(find_file(folder, "queries.jsonl"), RejectLog()).values())
    except ValueError:
        queries = []  # a bare corpus: recall is checked with sampled documents instead
    if len(queries) > config.index.verify_queries:
        rng = np.random.default_rng(0)
        queries = [queries[i] for i in sorted(rng.choice(len(queries), config.index.verify_queries, replace=False))]
    return stage_corpus(corpus, queries, Path(work_root), corpus_fingerprint(corpus), str(folder), len(rejects))


@task(name="choose-precision")
def choose_precision(
    model_dir: str, snapshot: CorpusSnapshot, encode_config: EncodeConfig, cache_dir: str
) -> PrecisionChoice:
    """The precision to encode in (model/index/publication.decide_precision), checked on the snapshot's sample."""

    def encode_documents(texts: Sequence[str], precision: str) -> np.ndarray:
        model = cached_encoder(model_dir, encode_config.max_seq_length)
        return encode(model, texts, "document", encode_config.batch_size, precision)

    texts = snapshot.sample_texts(encode_config.check_sample_docs)
    wanted = resolve_precision(encode_config.precision)
    fingerprint = document_encoder_fingerprint(model_dir) if wanted != "fp32" else ""
    choice = decide_precision(
        encode_config.precision, wanted, texts, fingerprint, encode_config, Path(cache_dir), encode_documents
    )
    if choice.fallback:
        run_logger().warning("%s on %d docs (%s): encoding in fp32", wanted, len(texts), choice.fallback)
    elif wanted != "fp32":
        run_logger().info(
            "%s kept on %d docs: mean cosine %.4f, min %.4f", wanted, len(texts), choice.mean_cosine, choice.min_cosine
        )
    return choice


@task(name="plan-shards")
def plan_shards_task(
    snapshot: CorpusSnapshot, model_dir: str, precision: str, encode_config: EncodeConfig, cache_dir: str
) -> PublishPlan:
    """Shards of the documents the embedding cache lacks for this document encoder, length and precision."""
    cache = corpus_cache(model_dir, Path(cache_dir), encode_config.max_seq_length, precision)  # type: ignore[arg-type]
    plan = plan_shards(snapshot, cache, Path(cache_dir), encode_config.shard_size)
    if plan.repaired_segments:
        run_logger().warning(
            "%d damaged embedding cache segments removed: their documents are encoded again", plan.repaired_segments
        )
    run_logger().info(
        "%d of %d documents have cached embeddings; %d to encode in %d shards",
        plan.reused,
        snapshot.documents,
        plan.to_encode,
        len(plan.shards),
    )
    return plan


@task(name="build-bm25")
def build_bm25(snapshot: CorpusSnapshot, settings: BM25Settings) -> str:
    """BM25 over the snapshot (same row order as the dense index, so hybrid search maps both rankings to one id
    list); built once per corpus fingerprint, so a new model over the same corpus reuses it.

    Not run beside the encoding: in a thread it contends for the GIL with the encoder's tokenisation and Python
    overhead, and measured no faster than one after the other (docs/benchmarks.md)."""
    start = time.perf_counter()
    folder, counted = snapshot_bm25(snapshot, settings)
    run_logger().info(
        "BM25 index over %d documents ready in %.2fs (%d of them tokenised, the others' term counts reused)",
        snapshot.documents,
        time.perf_counter() - start,
        counted,
    )
    return str(folder)


@task(name="encode-shard", retries=1, retry_delay_seconds=2, task_run_name="encode-shard-{shard.number}")
def encode_shard(
    shard: Shard,
    plan: PublishPlan,
    model_dir: str,
    precision: str,
    batch_size: int,
    max_seq_length: int | None,
    threads: int | None = None,
    compiled: bool = False,
) -> int:
    """Encode one shard's documents (role ``document``) into one cache segment; returns the documents encoded.

    ``compiled``: run the document encoder through ``torch.compile`` (bf16 only; see
    :mod:`denseflow.model.compiled`), compiled once per worker process; where that fails its check, eager.

    ``threads`` pins torch's (and ONNX Runtime's) intra-op threads in this process: a Dask worker with one
    thread must not run a two-thread encode beside another worker's on the same cores. The segment appears
    whole or not at all, so a worker killed mid-shard leaves nothing behind and the retry encodes it whole.
    """
    if threads:
        import torch

        torch.set_num_threads(threads)
    hashes, texts = read_shard(shard)
    if compiled:
        model, eager_reason = compiled_encoder(model_dir, max_seq_length)
        if eager_reason:
            run_logger().warning("shard %d: encoded eager, not compiled: %s", shard.number, eager_reason)
    else:
        model = cached_encoder(model_dir, max_seq_length)
    start = time.perf_counter()
    embeddings = encode(model, texts, "document", batch_size, precision)  # type: ignore[arg-type]
    seconds = time.perf_counter() - start
    plan.cache.add(hashes, embeddings, name=shard.segment)
    run_logger().info(
        "shard %d: %d docs in %.1fs (%.1f docs/s)", shard.number, len(texts), seconds, len(texts) / seconds
    )
    return len(texts)


# ------------------------------------------------------------------------------------------ index


@task(name="build-index")
def build_and_verify(
    plan: PublishPlan,
    model: ModelToPublish,
    index_config: IndexConfig,
    choice: PrecisionChoice,
    encode_config: EncodeConfig,
    bm25_dir: str,
) -> BuiltIndex:
    """Build the configured index from the cached vectors and hold it to recall@10 against exact search before
    anything is published (model/index/built.py); written to a private build folder with the query tower."""
    encoder = cached_encoder(model.model_dir, encode_config.max_seq_length)
    built = build_verified_index(plan, model, encoder, index_config, choice, encode_config)
    run_logger().info(
        "index %s built in %.2fs; recall@10 vs exact %.4f", built.index_type, built.build_seconds, built.recall_at_10
    )
    build_dir = write_build(built, Path(plan.snapshot.folder))
    why_not = export_build_query_tower(model.model_dir, build_dir, built.manifest.model.query_length)
    if why_not:
        run_logger().warning("query tower not exported for torch-free search (%s): search loads the model", why_not)
    return BuiltIndex(
        str(build_dir), built.recall_at_10, built.build_seconds, str(plan.snapshot.documents_file), bm25_dir
    )


@task(name="publish-index")
def publish_version(
    built: BuiltIndex, model: ModelToPublish, index_root: str, index_config: IndexConfig
) -> PublishedVersion:
    """Stage, verify and atomically publish the built index with its model; prune old versions."""
    build_dir = Path(built.build_dir)
    index, doc_ids, manifest = read_build(build_dir)
    info = publish(
        Path(index_root),
        index_config.name,
        index,
        doc_ids,
        Path(model.model_dir),
        manifest,
        index_config.keep_versions,
        bm25_dir=Path(built.bm25_dir),
        documents_file=Path(built.documents_file),
        query_tower_dir=built_query_tower(build_dir),
    )
    run_logger().info("published %s/%s (%d documents)", index_config.name, info.version, len(doc_ids))
    return PublishedVersion(index_config.name, info.version, str(info.path), len(doc_ids))


@task(name="log-index-artifact", retries=2, retry_delay_seconds=5)
def log_index_artifact(
    published: PublishedVersion, model: ModelToPublish, plan: PublishPlan, config: PublishConfig
) -> str | None:
    """Attach index, ids and manifest to the model version's MLflow run (the model itself is already there),
    with how many documents this publication encoded and how many it took from the cache."""
    if not model.run_id:
        run_logger().info("model %s has no MLflow run: index not logged", model.name)
        return None

    configure_tracking(config.tracking, config.workspace)
    folder = Path(published.path)
    artifact_path = f"indexes/{published.name}/{published.version}"
    # Every file search needs, under the manifest's checksums: a replica can serve the version from the registry.
    for name in (INDEX_FILE, DOC_IDS_FILE, MANIFEST, DOCS_FILE):
        if (folder / name).is_file():
            log_artifact(model.run_id, folder / name, artifact_path)
    for sub in (BM25_FOLDER, QUERY_TOWER_FOLDER):
        if (folder / sub).is_dir():
            log_artifact(model.run_id, folder / sub, f"{artifact_path}/{sub}")
    set_version_tags(model.name, model.version, {f"index.{published.name}": published.version})
    log_metrics(model.run_id, {"documents_encoded": plan.to_encode, "documents_reused": plan.reused}, "publish.")
    return artifact_path
