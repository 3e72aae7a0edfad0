"""The work behind ``publish_index``, as plain functions over files: stage the corpus, judge the precision, plan
the shards the cache lacks, and assemble the corpus matrix from the cache.

A publication encodes only documents the per-document embedding cache (:mod:`denseflow.model.embedding_cache`)
has no vector for under this document encoder, length and precision; a shard is a slice of those, written as a
small JSON file any worker can read from a shared filesystem, and its vectors go straight into the cache as one
segment named after the shard. A re-run after a crash plans again from the cache: shards already encoded are
not planned a second time.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from denseflow.model.config import EncodeConfig
from denseflow.model.data.beir import Document
from denseflow.model.embedding_cache import CacheKey, EmbeddingCache, content_hash
from denseflow.model.index.bm25 import (
    META_FILE,
    BM25Index,
    BM25Settings,
    TermCounts,
    load_counts,
    reuse_counts,
    save_counts,
)
from denseflow.model.index.build import embedding_agreement
from denseflow.model.index.documents import DOCS_FILE, read_full_texts, write_documents
from denseflow.model.index.store import BM25_FOLDER

CORPUS_IDS_FILE = "corpus_ids.json"
QUERIES_FILE = "verify_queries.json"
COUNTS_FILE = "bm25_counts.npz"  # each document's BM25 term counts by content hash


@dataclass(frozen=True)
class CorpusSnapshot:
    """One corpus as publication reads it, staged once per fingerprint: ids in row order with their content
    hashes, the stored documents (``docs.sqlite``) and the sample queries recall is verified with."""

    corpus_dir: str
    fingerprint: str
    documents: int
    rejected_rows: int
    folder: str

    @property
    def ids_file(self) -> Path:
        return Path(self.folder) / CORPUS_IDS_FILE

    @property
    def documents_file(self) -> Path:
        return Path(self.folder) / DOCS_FILE

    @property
    def queries_file(self) -> Path:
        return Path(self.folder) / QUERIES_FILE

    def ids_and_hashes(self) -> tuple[list[str], list[str]]:
        rows = json.loads(self.ids_file.read_text(encoding="utf-8"))
        return rows["ids"], rows["hashes"]

    def sample_texts(self, count: int) -> list[str]:
        """The first ``count`` documents in row order: the precision check's sample."""
        texts = []
        for text in read_full_texts(self.documents_file):
            if len(texts) == count:
                break
            texts.append(text)
        return texts

    def texts_of(self, rows: Sequence[int]) -> list[str]:
        """The full texts of ``rows``, in row order (one pass over the stored documents)."""
        wanted = set(rows)
        return [text for row, text in enumerate(read_full_texts(self.documents_file)) if row in wanted]

    def verify_queries(self) -> list[str]:
        return json.loads(self.queries_file.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Shard:
    """Documents one encoding task turns into one cache segment."""

    number: int
    input: str  # JSON: ids, hashes, texts
    count: int
    segment: str  # the cache segment's name: a retried shard rewrites it instead of adding another


@dataclass(frozen=True)
class PublishPlan:
    """What a publication will encode and what it takes from the cache."""

    snapshot: CorpusSnapshot
    cache_dir: str
    cache_key: CacheKey
    shards: tuple[Shard, ...]
    reused: int  # documents whose vectors the cache already held
    repaired_segments: int  # damaged cache segments found (and removed) while planning

    @property
    def to_encode(self) -> int:
        return sum(shard.count for shard in self.shards)

    @property
    def cache(self) -> EmbeddingCache:
        return EmbeddingCache(Path(self.cache_dir), self.cache_key)


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a publication encodes in, the one asked for, and the check that decided it."""

    precision: str
    requested: str
    sample_docs: int = 0
    mean_cosine: float | None = None
    min_cosine: float | None = None
    neighbour_recall: float | None = None
    fallback: str | None = None  # why the asked-for precision was not kept


def stage_corpus(
    corpus: Mapping[str, Document],
    queries: Sequence[str],
    work_root: Path,
    fingerprint: str,
    corpus_dir: str,
    rejected_rows: int,
) -> CorpusSnapshot:
    """Write the corpus's ids, content hashes and stored documents under ``work_root/corpus-<fingerprint>`` once."""
    folder = Path(work_root) / f"corpus-{fingerprint}"
    folder.mkdir(parents=True, exist_ok=True)
    snapshot = CorpusSnapshot(corpus_dir, fingerprint, len(corpus), rejected_rows, str(folder))
    if not snapshot.ids_file.is_file():
        ids = list(corpus)
        hashes = [content_hash(corpus[doc_id].full_text) for doc_id in ids]
        # docs.sqlite first: the ids file is the marker that every file of the snapshot is complete
        write_documents(
            snapshot.documents_file, ((doc_id, corpus[doc_id].title, corpus[doc_id].text) for doc_id in ids)
        )
        _write_json(snapshot.ids_file, {"ids": ids, "hashes": hashes})
    _write_json(snapshot.queries_file, list(queries))
    return snapshot


def plan_shards(snapshot: CorpusSnapshot, cache: EmbeddingCache, cache_dir: Path, shard_size: int) -> PublishPlan:
    """Shards of the documents ``cache`` lacks, in row order, ``shard_size`` each; nothing to encode when it has all."""
    ids, hashes = snapshot.ids_and_hashes()
    found = cache.lookup(hashes)
    missing = found.missing
    texts = dict(zip(missing, snapshot.texts_of(missing), strict=True)) if missing else {}
    key_text = json.dumps([cache.key.folder_name, shard_size, [hashes[row] for row in missing]])
    work_hash = hashlib.sha256(key_text.encode()).hexdigest()[:16]
    work = Path(snapshot.folder) / f"encode-{work_hash}"
    shards = []
    for number, start in enumerate(range(0, len(missing), shard_size)):
        rows = missing[start : start + shard_size]
        path = work / f"shard-{number:05d}.json"
        if not path.is_file():
            work.mkdir(parents=True, exist_ok=True)
            _write_json(
                path,
                {
                    "ids": [ids[row] for row in rows],
                    "hashes": [hashes[row] for row in rows],
                    "texts": [texts[row] for row in rows],
                },
            )
        shards.append(Shard(number, str(path), len(rows), f"{work_hash}-{number:05d}"))
    return PublishPlan(
        snapshot=snapshot,
        cache_dir=str(cache_dir),
        cache_key=cache.key,
        shards=tuple(shards),
        reused=len(ids) - len(missing),
        repaired_segments=found.repaired_segments,
    )


def snapshot_bm25(snapshot: CorpusSnapshot, settings: BM25Settings) -> tuple[Path, int]:
    """The BM25 index over the snapshot's documents in row order, and how many documents had to be tokenised and
    counted for it (0 when it was already built).

    Built once per corpus fingerprint and BM25 settings: it depends on the texts and the analyzer alone, so every
    model published over this corpus shares it. Its term counts (one file per analyzer) are kept beside it by
    content hash; a new snapshot takes the counts of the documents the latest earlier snapshot already counted
    and tokenises only new and edited ones (idf and the mean length are then recomputed over the whole corpus, as
    they must be)."""
    folder = Path(snapshot.folder) / f"{BM25_FOLDER}-{_slug(settings.describe())}"
    if (folder / META_FILE).is_file():
        return folder, 0
    ids, hashes = snapshot.ids_and_hashes()
    counts_file = _counts_file(settings)
    counts, counted = reuse_counts(hashes, _latest_counts(snapshot, counts_file, settings), snapshot.texts_of, settings)
    save_counts(Path(snapshot.folder) / counts_file, counts, hashes, settings)
    partial = Path(snapshot.folder) / f".{BM25_FOLDER}.{uuid.uuid4().hex}"
    BM25Index.from_counts(ids, counts, settings).save(partial)
    try:
        os.replace(partial, folder)  # whole or not at all; a concurrent publisher's identical copy may be first
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)
    return folder, counted


def _slug(described: dict) -> str:
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:12]


def _counts_file(settings: BM25Settings) -> str:
    """Term counts depend on the analyzer, not on k1/b: one file per tokenizer."""
    return COUNTS_FILE.replace(".npz", f"-{_slug({'tokenizer': settings.tokenizer})}.npz")


def _latest_counts(
    snapshot: CorpusSnapshot, counts_file: str, settings: BM25Settings
) -> tuple[list[str], TermCounts] | None:
    """The term counts of the most recently written other snapshot under the same work folder, if any is readable."""
    here = Path(snapshot.folder)
    earlier = sorted(
        (path for path in here.parent.glob(f"corpus-*/{counts_file}") if path.parent != here),
        key=lambda path: path.stat().st_mtime,
        reverse=True,
    )
    for path in earlier:
        loaded = load_counts(path, settings)
        if loaded is not None:
            return loaded
    return None


def read_shard(shard: Shard) -> tuple[list[str], list[str]]:
    """A shard's content hashes and texts."""
    rows = json.loads(Path(shard.input).read_text(encoding="utf-8"))
    return rows["hashes"], rows["texts"]


def assemble_embeddings(plan: PublishPlan) -> tuple[list[str], np.ndarray]:
    """Doc ids and their vectors in row order, from the cache; fails naming the documents still without one."""
    ids, hashes = plan.snapshot.ids_and_hashes()
    found = plan.cache.lookup(hashes)
    if found.missing or found.vectors is None:
        names = ", ".join(ids[row] for row in found.missing[:5])
        raise ValueError(
            f"{len(found.missing)} of {len(ids)} documents have no embedding in {plan.cache.folder} "
            f"after encoding (first: {names}); a cache segment was removed while publishing: run it again"
        )
    return ids, found.vectors


def precision_verdict(
    agreement: Mapping[str, float],
    precision: str,
    bf16_min_cosine: float,
    int8_min_mean_cosine: float,
    int8_min_neighbour_recall: float,
) -> str | None:
    """None when ``precision`` keeps quality against fp32 on the sample, else why it does not."""
    if precision == "bf16" and agreement["min_cosine"] < bf16_min_cosine:
        return f"min cosine {agreement['min_cosine']:.4f} < bf16_min_cosine {bf16_min_cosine}"
    if precision == "int8":
        recall = neighbour_recall(agreement)
        if agreement["mean_cosine"] < int8_min_mean_cosine:
            return f"mean cosine {agreement['mean_cosine']:.4f} < int8_min_mean_cosine {int8_min_mean_cosine}"
        if recall < int8_min_neighbour_recall:
            return f"neighbour recall@10 {recall:.4f} < int8_min_neighbour_recall {int8_min_neighbour_recall}"
    return None


def decide_precision(
    requested: str,
    wanted: str,
    texts: Sequence[str],
    document_encoder: str,
    settings: EncodeConfig,
    cache_dir: Path,
    encode_documents: Callable[[Sequence[str], str], np.ndarray],
) -> PrecisionChoice:
    """bf16 or int8 only where it keeps quality: compared with fp32 on the sample ``texts``, else fp32.

    ``wanted`` is ``requested`` resolved for this CPU; ``encode_documents(texts, precision)`` encodes with the
    document tower (called only when the check must run). The figures are recorded in ``cache_dir`` under the
    document encoder's fingerprint, length, precision and sample, so a re-publication over the same sample skips
    both encodes. A precision that fails to encode (int8 needs an ONNX export) falls back to fp32 with the reason.
    """
    if wanted == "fp32":
        return PrecisionChoice("fp32", requested)
    key = agreement_key(document_encoder, settings.max_seq_length, wanted, texts)
    agreement = recorded_agreement(Path(cache_dir), key)
    if agreement is None:
        reference = encode_documents(texts, "fp32")
        try:
            candidate = encode_documents(texts, wanted)
        except Exception as err:  # noqa: BLE001 - any export or runtime failure means: encode in fp32
            return PrecisionChoice("fp32", requested, len(texts), fallback=f"{wanted} encoding failed: {err}")
        agreement = embedding_agreement(reference, candidate)
        record_agreement(Path(cache_dir), key, agreement)
    reason = precision_verdict(
        agreement, wanted, settings.bf16_min_cosine, settings.int8_min_mean_cosine, settings.int8_min_neighbour_recall
    )
    return PrecisionChoice(
        "fp32" if reason else wanted,
        requested,
        len(texts),
        agreement["mean_cosine"],
        agreement["min_cosine"],
        neighbour_recall(agreement),
        reason,
    )


AGREEMENT_FILE = "precision_checks.json"


def agreement_key(document_encoder: str, max_seq_length: int | None, precision: str, texts: Sequence[str]) -> str:
    """What a precision check's figures depend on: the document encoder, the length, the precision, the sample."""
    sample = hashlib.sha256("\n".join(content_hash(text) for text in texts).encode()).hexdigest()[:16]
    return f"{document_encoder}|{max_seq_length}|{precision}|{sample}"


def recorded_agreement(cache_dir: Path, key: str) -> dict[str, float] | None:
    """A precision check's figures from an earlier publication with the same key (they are deterministic)."""
    path = Path(cache_dir) / AGREEMENT_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8")).get(key)
    except (OSError, ValueError):
        return None


def record_agreement(cache_dir: Path, key: str, agreement: Mapping[str, float]) -> None:
    path = Path(cache_dir) / AGREEMENT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        checks = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        checks = {}
    checks[key] = dict(agreement)
    _write_json(path, checks)  # two publishers racing lose one entry at worst: it is measured again next time


def neighbour_recall(agreement: Mapping[str, float]) -> float:
    return next(value for key, value in agreement.items() if key.startswith("neighbour_recall@"))


def _write_json(path: Path, value: object) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(value), encoding="utf-8")
    os.replace(tmp, path)
