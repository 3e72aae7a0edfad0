"""Publish tasks: resolve the model, encode the corpus in shards, build and verify the index, publish, log.

Tasks hand each other paths and small dicts, never models or indexes, so Prefect can hash inputs and
a Dask worker on another machine can run any shard given a shared filesystem. Shard outputs are
keyed by model checksum, corpus fingerprint and encoding settings: a retried or re-run publication
encodes only the shards that are missing.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task
from sentence_transformers import SentenceTransformer

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
    document_encoder_fingerprint,
    embedding_cache_path,
    encode,
    load_encoder,
    read_cached_embeddings,
    resolve_precision,
    tower_type,
)
from denseflow.model.index.bm25 import BM25Index
from denseflow.model.index.build import check_recall, embedding_agreement, timed_build
from denseflow.model.index.documents import DOCS_FILE, write_documents
from denseflow.model.index.store import (
    BM25_FOLDER,
    DOC_IDS_FILE,
    INDEX_FILE,
    build_manifest,
    publish,
    search_settings,
)
from denseflow.registry.keys import HYBRID_METHOD_TAG, HYBRID_WEIGHT_TAG, SERVED_MODE_TAG
from denseflow.tasks.tracking import run_logger


@functools.lru_cache(maxsize=2)
def _cached_encoder(model_dir: str, max_seq_length: int | None) -> SentenceTransformer:
    """One model per worker process and folder: shards after the first skip the load."""
    return load_encoder(model_dir, max_seq_length)


def _atomic_write_bytes(path: Path, save: Any) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    save(tmp)
    os.replace(tmp, path)


def shard_output(shard: dict[str, Any], precision: str) -> Path:
    """A shard's embeddings file, beside its input: ``shard-N.<precision>.npy``."""
    source = Path(shard["input"])
    return source.with_name(f"{source.stem}.{precision}.npy")


def _save_npy(path: Path, array: np.ndarray) -> None:
    with path.open("wb") as out:  # a file object: np.save would append ".npy" to a temporary name
        np.save(out, array)


# ------------------------------------------------------------------------------------------ model


@task(name="resolve-model", retries=2, retry_delay_seconds=5)
def resolve_model_version(config: PublishConfig) -> dict[str, Any]:
    """``{name, version, run_id, model_dir}`` of the model ``config.model`` names *now*.

    A registry reference (``retriever@production``, ``retriever/3``) is looked up in MLflow and
    downloaded; an existing folder is used as is (no registry identity, so no run to log to).
    """
    folder = Path(config.model).expanduser()
    if folder.is_dir():
        return {
            "name": folder.name,
            "version": None,
            "run_id": None,
            "model_dir": str(folder.resolve()),
            "search": published_search(config.index, {}),
        }
    from denseflow.registry.resolve import resolve_model
    from denseflow.tasks.tracking import configure_tracking

    configure_tracking(config.tracking, config.workspace)
    resolved = resolve_model(config.model, config.workspace, default_name=config.tracking.registered_model)
    run_logger().info("model %s resolved to %s (run %s)", config.model, resolved.uri, resolved.run_id)
    from mlflow.tracking import MlflowClient

    tags = MlflowClient().get_model_version(resolved.name, resolved.version).tags or {}
    return {
        "name": resolved.name,
        "version": resolved.version,
        "run_id": resolved.run_id,
        "model_dir": str(resolved.local_dir),
        "search": published_search(config.index, tags),
    }


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


@task(name="plan-shards")
def plan_shards(config: PublishConfig, model: dict[str, Any], work_root: str) -> dict[str, Any]:
    """Read the corpus once and write one input file per shard (ids and texts) plus sample queries."""
    folder = Path(config.data.path or bundled_scifact_dir())
    rejects = RejectLog()
    corpus = read_corpus(find_file(folder, "corpus.jsonl"), rejects)
    if rejects:
        run_logger().warning("corpus %s: %d rows rejected %s", folder, len(rejects), rejects.counts())
    try:
        queries = list(read_queries(find_file(folder, "queries.jsonl"), RejectLog()).values())
    except ValueError:
        queries = []  # a bare corpus: recall is checked with sampled documents instead
    rng = np.random.default_rng(0)
    if len(queries) > config.index.verify_queries:
        queries = [queries[i] for i in sorted(rng.choice(len(queries), config.index.verify_queries, replace=False))]

    fingerprint = corpus_fingerprint(corpus)
    settings = config.encode.model_dump(include={"max_seq_length", "shard_size", "batch_size"})
    key_text = json.dumps([document_encoder_fingerprint(model["model_dir"]), fingerprint, settings], sort_keys=True)
    work = Path(work_root) / hashlib.sha256(key_text.encode()).hexdigest()[:16]
    work.mkdir(parents=True, exist_ok=True)
    doc_ids = list(corpus)
    shards = []
    for number, start in enumerate(range(0, len(doc_ids), config.encode.shard_size)):
        ids = doc_ids[start : start + config.encode.shard_size]
        path = work / f"shard-{number:05d}.json"
        if not path.is_file():
            rows = {"ids": ids, "texts": [corpus[doc_id].full_text for doc_id in ids]}
            _atomic_write_bytes(path, lambda tmp, rows=rows: tmp.write_text(json.dumps(rows), encoding="utf-8"))
        shards.append({"number": number, "input": str(path), "count": len(ids)})
    queries_path = work / "verify_queries.json"
    queries_path.write_text(json.dumps(queries), encoding="utf-8")
    documents = work / DOCS_FILE
    if not documents.is_file():
        write_documents(documents, ((doc_id, doc.title, doc.text) for doc_id, doc in corpus.items()))
    return {
        "documents_file": str(documents),
        "corpus_dir": str(folder),
        "corpus_fingerprint": fingerprint,
        "documents": len(doc_ids),
        "rejected_rows": len(rejects),
        "work_dir": str(work),
        "shards": shards,
        "queries": str(queries_path),
    }


def _sample_texts(plan: dict[str, Any], count: int) -> list[str]:
    """Up to ``count`` documents from the first shards, in corpus order: the precision check's sample."""
    texts: list[str] = []
    for shard in plan["shards"]:
        texts.extend(json.loads(Path(shard["input"]).read_text(encoding="utf-8"))["texts"][: count - len(texts)])
        if len(texts) >= count:
            break
    return texts


def precision_verdict(agreement: dict[str, float], precision: str, encode_config: EncodeConfig) -> str | None:
    """None when ``precision`` keeps quality against fp32 on the sample, else why it does not."""
    if precision == "bf16" and agreement["min_cosine"] < encode_config.bf16_min_cosine:
        return f"min cosine {agreement['min_cosine']:.4f} < bf16_min_cosine {encode_config.bf16_min_cosine}"
    if precision == "int8":
        recall = next(value for key, value in agreement.items() if key.startswith("neighbour_recall@"))
        if agreement["mean_cosine"] < encode_config.int8_min_mean_cosine:
            return f"mean cosine {agreement['mean_cosine']:.4f} < int8_min_mean_cosine {encode_config.int8_min_mean_cosine}"
        if recall < encode_config.int8_min_neighbour_recall:
            return f"neighbour recall@10 {recall:.4f} < int8_min_neighbour_recall {encode_config.int8_min_neighbour_recall}"
    return None


@task(name="choose-precision")
def choose_precision(model_dir: str, plan: dict[str, Any], encode_config: EncodeConfig) -> dict[str, Any]:
    """bf16 or int8 only where it keeps quality: compared with fp32 on a sample, else fall back to fp32.

    The returned dict goes into the manifest's ``encode`` section: the precision used, the one asked
    for, the agreement figures and, when the check failed, ``fallback`` with the reason.
    """
    wanted = resolve_precision(encode_config.precision)
    if wanted == "fp32":
        return {"precision": "fp32", "requested": encode_config.precision, "agreement": None, "fallback": None}
    texts = _sample_texts(plan, encode_config.check_sample_docs)
    model = _cached_encoder(model_dir, encode_config.max_seq_length)
    reference = encode(model, texts, "document", encode_config.batch_size, "fp32")
    try:
        candidate = encode(model, texts, "document", encode_config.batch_size, wanted)
    except Exception as err:  # int8 needs an ONNX export; a model that will not export is encoded in fp32
        reason = f"{wanted} encoding failed: {err}"
        run_logger().warning("%s: encoding in fp32", reason)
        return {"precision": "fp32", "requested": encode_config.precision, "agreement": None, "fallback": reason}
    agreement = embedding_agreement(reference, candidate)
    reason = precision_verdict(agreement, wanted, encode_config)
    if reason:
        run_logger().warning(
            "%s embeddings drift from fp32 on %d docs (%s): encoding in fp32", wanted, len(texts), reason
        )
    else:
        run_logger().info("%s kept: %s on %d docs", wanted, agreement, len(texts))
    return {
        "precision": "fp32" if reason else wanted,
        "requested": encode_config.precision,
        "agreement": agreement,
        "sample_docs": len(texts),
        "fallback": reason,
    }


@task(name="reuse-embeddings")
def reuse_cached_embeddings(
    plan: dict[str, Any], model_dir: str, precision: str, max_seq_length: int | None, cache_dir: str
) -> int:
    """Cut shard outputs from whole-corpus embeddings that evaluation already computed; returns shards reused.

    ``retrain`` evaluates the new model on the same corpus, length and precision it then publishes
    with, so encoding the corpus again would spend minutes recomputing the same matrix.
    """
    missing = [shard for shard in plan["shards"] if not shard_output(shard, precision).is_file()]
    if not missing:
        return 0
    path = embedding_cache_path(
        Path(cache_dir), document_encoder_fingerprint(model_dir), plan["corpus_fingerprint"], max_seq_length, precision
    )
    ids = [json.loads(Path(shard["input"]).read_text(encoding="utf-8"))["ids"] for shard in missing]
    cached = read_cached_embeddings(path, [doc_id for shard_ids in ids for doc_id in shard_ids])
    if cached is None:
        return 0
    start = 0
    for shard, shard_ids in zip(missing, ids, strict=True):
        rows = cached[start : start + len(shard_ids)]
        _atomic_write_bytes(shard_output(shard, precision), functools.partial(_save_npy, array=rows))
        start += len(shard_ids)
    run_logger().info("%d of %d shards taken from %s", len(missing), len(plan["shards"]), path.name)
    return len(missing)


@task(name="encode-shard", retries=1, retry_delay_seconds=2, task_run_name="encode-shard-{shard[number]}")
def encode_shard(
    shard: dict[str, Any],
    model_dir: str,
    precision: str,
    batch_size: int,
    max_seq_length: int | None,
    threads: int | None = None,
) -> str:
    """Encode one shard's documents (role ``document``) to ``shard-N.<precision>.npy``; reused if present.

    ``threads`` pins torch's (and ONNX Runtime's) intra-op threads in this process: a Dask worker with one
    thread must not run a two-thread encode beside another worker's on the same cores.
    The output is written to a temporary name and renamed, so a worker killed mid-shard leaves nothing
    behind and the retry encodes the shard whole.
    """
    output = shard_output(shard, precision)
    if output.is_file():
        return str(output)
    if threads:
        import torch

        torch.set_num_threads(threads)
    texts = json.loads(Path(shard["input"]).read_text(encoding="utf-8"))["texts"]
    model = _cached_encoder(model_dir, max_seq_length)
    start = time.perf_counter()
    embeddings = encode(model, texts, "document", batch_size, precision)  # type: ignore[arg-type]
    seconds = time.perf_counter() - start
    _atomic_write_bytes(output, functools.partial(_save_npy, array=embeddings))
    run_logger().info(
        "shard %d: %d docs in %.1fs (%.1f docs/s)", shard["number"], len(texts), seconds, len(texts) / seconds
    )
    return str(output)


def load_shards(plan: dict[str, Any], outputs: list[str]) -> tuple[list[str], np.ndarray]:
    """Doc ids and embeddings in corpus order, checking every shard is there with the right row count."""
    doc_ids: list[str] = []
    parts = []
    for shard, output in zip(plan["shards"], outputs, strict=True):
        ids = json.loads(Path(shard["input"]).read_text(encoding="utf-8"))["ids"]
        matrix = np.load(output)
        if matrix.shape[0] != len(ids):
            raise ValueError(f"{output}: {matrix.shape[0]} rows for {len(ids)} documents")
        doc_ids.extend(ids)
        parts.append(matrix)
    return doc_ids, np.concatenate(parts)


# ------------------------------------------------------------------------------------------ index


@task(name="build-index")
def build_and_verify(
    plan: dict[str, Any], outputs: list[str], model: dict[str, Any], index_config: IndexConfig, encode_info: dict
) -> dict[str, Any]:
    """Build the configured index and hold it to recall@10 against exact search before anything is published."""
    doc_ids, embeddings = load_shards(plan, outputs)
    if len(doc_ids) != plan["documents"]:
        raise ValueError(f"{len(doc_ids)} embeddings for {plan['documents']} documents")
    spec = index_config.spec()
    index, build_seconds = timed_build(embeddings, spec)
    queries = json.loads(Path(plan["queries"]).read_text(encoding="utf-8"))
    query_embeddings = None
    if queries:
        encoder = _cached_encoder(model["model_dir"], encode_info["max_seq_length"])
        query_embeddings = encode(encoder, queries, "query", 64, encode_info["precision"])
    recall = check_recall(
        index, embeddings, spec, index_config.recall_floor, query_embeddings, index_config.verify_queries
    )
    run_logger().info("index %s built in %.2fs; recall@10 vs exact %.4f", spec.type, build_seconds, recall)

    build_dir = Path(plan["work_dir"]) / f"build-{uuid.uuid4().hex[:8]}"
    build_dir.mkdir()
    import faiss

    faiss.write_index(index, str(build_dir / INDEX_FILE))
    (build_dir / DOC_IDS_FILE).write_text(json.dumps(doc_ids), encoding="utf-8")
    # BM25 over the same documents in the same row order, so hybrid search maps both rankings to one id list.
    bm25_start = time.perf_counter()
    texts = (text for shard in plan["shards"] for text in json.loads(Path(shard["input"]).read_text("utf-8"))["texts"])
    BM25Index.from_texts(doc_ids, texts).save(build_dir / BM25_FOLDER)
    run_logger().info("BM25 index over %d documents built in %.2fs", len(doc_ids), time.perf_counter() - bm25_start)
    encoder_model = _cached_encoder(model["model_dir"], encode_info["max_seq_length"])
    model_info = {
        "name": model["name"],
        "version": model["version"],
        "run_id": model["run_id"],
        "tower_type": tower_type(encoder_model),
        "max_seq_length": encode_info["max_seq_length"] or encoder_model.max_seq_length,
    }
    manifest = build_manifest(
        spec,
        len(doc_ids),
        embeddings.shape[1],
        model_info,
        plan["corpus_fingerprint"],
        build_seconds,
        recall,
        len(queries) if queries else min(index_config.verify_queries, len(doc_ids)),
        extra={
            "encode": {k: v for k, v in encode_info.items() if k != "max_seq_length"},
            "corpus": {"path": plan["corpus_dir"], "rejected_rows": plan["rejected_rows"]},
            "search": model["search"],
        },
    )
    (build_dir / "manifest.partial.json").write_text(json.dumps(manifest), encoding="utf-8")
    return {
        "build_dir": str(build_dir),
        "recall_at_10": recall,
        "build_seconds": build_seconds,
        "documents_file": plan.get("documents_file"),
    }


@task(name="publish-index")
def publish_version(built: dict[str, Any], model: dict[str, Any], index_root: str, index_config: IndexConfig) -> dict:
    """Stage, verify and atomically publish the built index with its model; prune old versions."""
    import faiss

    build_dir = Path(built["build_dir"])
    index = faiss.read_index(str(build_dir / INDEX_FILE))
    doc_ids = json.loads((build_dir / DOC_IDS_FILE).read_text(encoding="utf-8"))
    manifest = json.loads((build_dir / "manifest.partial.json").read_text(encoding="utf-8"))
    info = publish(
        Path(index_root),
        index_config.name,
        index,
        doc_ids,
        Path(model["model_dir"]),
        manifest,
        index_config.keep_versions,
        bm25_dir=build_dir / BM25_FOLDER,
        documents_file=Path(built["documents_file"]) if built.get("documents_file") else None,
    )
    run_logger().info(
        "published %s/%s (%d documents)", index_config.name, info.version, manifest.get("count", len(doc_ids))
    )
    return {"name": index_config.name, "version": info.version, "path": str(info.path), "count": len(doc_ids)}


@task(name="log-index-artifact", retries=2, retry_delay_seconds=5)
def log_index_artifact(published: dict[str, Any], model: dict[str, Any], config: PublishConfig) -> str | None:
    """Attach index, ids and manifest to the model version's MLflow run (the model itself is already there)."""
    if not model["run_id"]:
        run_logger().info("model %s has no MLflow run: index not logged", model["name"])
        return None
    from mlflow.tracking import MlflowClient

    from denseflow.tasks.tracking import configure_tracking

    configure_tracking(config.tracking, config.workspace)
    client = MlflowClient()
    folder = Path(published["path"])
    artifact_path = f"indexes/{published['name']}/{published['version']}"
    for name in (INDEX_FILE, DOC_IDS_FILE, "manifest.json"):
        client.log_artifact(model["run_id"], str(folder / name), artifact_path)
    client.log_artifacts(model["run_id"], str(folder / BM25_FOLDER), f"{artifact_path}/{BM25_FOLDER}")
    client.set_model_version_tag(model["name"], model["version"], f"index.{published['name']}", published["version"])
    return artifact_path
