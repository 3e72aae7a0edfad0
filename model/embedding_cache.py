"""Per-document embedding cache: a document is encoded once per document encoder, length and precision.

A corpus changes a little between publications (new abstracts, corrected ones, deletions); keying embeddings
on the whole corpus re-encoded all of it for every change. Here a vector is keyed by what it depends on: the
document encoder (:func:`denseflow.model.encoder.document_encoder_fingerprint`), ``max_seq_length``, the
precision, and the sha256 of the exact text encoded. Evaluation and publication share the cache, so a
publication after a retrain encodes nothing, and one after a 1 % corpus change encodes 1 %.

Layout: one folder per (encoder, length, precision) holding *segments*, each an uncompressed ``.npz`` of
``hashes`` (n × 32-byte hex) and ``vectors`` (n × dim float32). A segment is written to a temporary name,
fsynced and renamed, so a writer killed mid-way leaves no segment at all; two writers never share a file.
Reading checks each segment whole (zip CRC-32 and shapes): a damaged one is removed and its documents count
as missing, so they are encoded again and land in a new segment (the cache repairs itself). Many small
segments are merged under an advisory lock, never while another process merges.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import uuid
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SEGMENT_GLOB = "seg-*.npz"
MERGE_ABOVE = 32  # segments; past this a lookup merges them, so reads stay one pass over a few files
_HASH_DTYPE = "S32"


def content_hash(text: str) -> str:
    """The key of one document's text: 128 bits of sha256 (hex), enough that collisions never happen in practice."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True)
class CacheKey:
    """What every vector in one cache folder shares: the document encoder, the length it truncates to, the
    precision it ran in."""

    document_encoder: str
    max_seq_length: int | None
    precision: str

    @property
    def folder_name(self) -> str:
        return f"{self.document_encoder}-{self.max_seq_length}-{self.precision}"


@dataclass(frozen=True)
class Lookup:
    """Vectors found for a list of documents: ``vectors[i]`` is valid where ``found[i]``."""

    found: np.ndarray  # bool, one per requested hash
    vectors: np.ndarray | None  # (n, dim) float32; None when nothing was found
    repaired_segments: int  # damaged segments removed while reading

    @property
    def missing(self) -> list[int]:
        return [int(i) for i in np.flatnonzero(~self.found)]


class EmbeddingCache:
    """The segments of one :class:`CacheKey` under ``root``."""

    def __init__(self, root: Path, key: CacheKey) -> None:
        self.key = key
        self.folder = Path(root) / key.folder_name

    def segments(self) -> list[Path]:
        return sorted(self.folder.glob(SEGMENT_GLOB)) if self.folder.is_dir() else []

    def add(self, hashes: Sequence[str], vectors: np.ndarray, name: str | None = None) -> Path:
        """Write one segment of ``vectors`` keyed by ``hashes``; visible whole or not at all.

        ``name`` makes the segment's file name deterministic (a retried shard rewrites the same file rather
        than adding a duplicate); by default it is unique.
        """
        if len(hashes) != len(vectors):
            raise ValueError(f"{len(hashes)} hashes for {len(vectors)} vectors")
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"seg-{name or uuid.uuid4().hex}.npz"
        tmp = self.folder / f".tmp-{uuid.uuid4().hex}.npz"
        with tmp.open("wb") as out:
            np.savez(
                out,
                hashes=np.asarray(list(hashes), dtype=_HASH_DTYPE),
                vectors=np.ascontiguousarray(vectors, dtype=np.float32),
            )
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
        return path

    def lookup(self, hashes: Sequence[str]) -> Lookup:
        """The cached vector of each hash, reading every segment once; damaged segments are removed."""
        wanted: dict[bytes, list[int]] = {}
        for position, digest in enumerate(hashes):
            wanted.setdefault(digest.encode("ascii"), []).append(position)
        found = np.zeros(len(hashes), dtype=bool)
        vectors: np.ndarray | None = None
        repaired = 0
        segments = self.segments()
        if len(segments) > MERGE_ABOVE:
            self._merge(segments)
            segments = self.segments()
        for segment in segments:
            loaded = _read_segment(segment)
            if loaded is None:
                repaired += _remove_damaged(segment)
                continue
            segment_hashes, segment_vectors = loaded
            if vectors is None:
                vectors = np.zeros((len(hashes), segment_vectors.shape[1]), dtype=np.float32)
            elif segment_vectors.shape[1] != vectors.shape[1]:
                repaired += _remove_damaged(segment)
                continue
            for row, digest in enumerate(segment_hashes.tolist()):
                for position in wanted.get(digest, ()):
                    if not found[position]:
                        vectors[position] = segment_vectors[row]
                        found[position] = True
        return Lookup(found=found, vectors=vectors if found.any() else None, repaired_segments=repaired)

    def _merge(self, segments: list[Path]) -> None:
        """One segment in place of many; skipped when another process is merging (it will leave one)."""
        with _try_lock(self.folder / ".merge.lock") as locked:
            if not locked:
                return
            parts = [(segment, _read_segment(segment)) for segment in segments]
            readable = [(segment, part) for segment, part in parts if part is not None]
            if not readable:
                return
            seen: set[bytes] = set()
            keep_hashes, keep_vectors = [], []
            for _, (segment_hashes, segment_vectors) in readable:
                for row, digest in enumerate(segment_hashes.tolist()):
                    if digest not in seen:
                        seen.add(digest)
                        keep_hashes.append(digest.decode("ascii"))
                        keep_vectors.append(segment_vectors[row])
            self.add(keep_hashes, np.stack(keep_vectors))
            for segment, _ in readable:  # only after the merged segment is in place
                segment.unlink(missing_ok=True)
            log.info("embedding cache %s: %d segments merged into one", self.folder.name, len(readable))


def _read_segment(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """A segment's hashes and vectors, or None when it is damaged (truncated, bad CRC, shapes that disagree)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            hashes, vectors = data["hashes"], data["vectors"]
    except FileNotFoundError:
        return None  # merged away by another process between listing and reading
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        log.warning("embedding cache segment %s is damaged (%s): its documents will be encoded again", path, err)
        return None
    if hashes.ndim != 1 or vectors.ndim != 2 or len(hashes) != len(vectors):
        log.warning("embedding cache segment %s: %s hashes for %s vectors", path, hashes.shape, vectors.shape)
        return None
    return hashes, vectors


def _remove_damaged(path: Path) -> int:
    if not path.exists():
        return 0
    path.unlink(missing_ok=True)
    return 1


@contextlib.contextmanager
def _try_lock(path: Path) -> Iterator[bool]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
