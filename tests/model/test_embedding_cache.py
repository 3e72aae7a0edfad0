from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest

from denseflow.model import embedding_cache
from denseflow.model.embedding_cache import CacheKey, EmbeddingCache, content_hash

KEY = CacheKey("doc-abc", 128, "bf16")


def vectors(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, 4)).astype(np.float32)


def hashes(*texts: str) -> list[str]:
    return [content_hash(text) for text in texts]


def test_a_lookup_finds_vectors_by_text_in_the_order_asked(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path, KEY)
    stored = vectors(3)
    cache.add(hashes("a", "b", "c"), stored)
    found = cache.lookup(hashes("c", "x", "a"))
    assert found.found.tolist() == [True, False, True]
    assert found.missing == [1]
    np.testing.assert_array_equal(found.vectors[[0, 2]], stored[[2, 0]])


def test_another_length_precision_or_encoder_shares_nothing(tmp_path: Path) -> None:
    EmbeddingCache(tmp_path, KEY).add(hashes("a"), vectors(1))
    for other in (CacheKey("doc-abc", 256, "bf16"), CacheKey("doc-abc", 128, "fp32"), CacheKey("doc-xyz", 128, "bf16")):
        assert EmbeddingCache(tmp_path, other).lookup(hashes("a")).missing == [0]


def test_a_truncated_segment_is_removed_and_its_documents_count_as_missing(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path, KEY)
    cache.add(hashes("a"), vectors(1, seed=1))
    damaged = cache.add(hashes("b", "c"), vectors(2, seed=2))
    damaged.write_bytes(damaged.read_bytes()[:-40])
    found = cache.lookup(hashes("a", "b", "c"))
    assert found.missing == [1, 2]
    assert found.repaired_segments == 1
    assert not damaged.exists()
    cache.add(hashes("b", "c"), vectors(2, seed=2))  # encoded again: the next lookup finds everything
    assert cache.lookup(hashes("a", "b", "c")).missing == []


def test_a_flipped_bit_in_a_stored_vector_is_caught(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path, KEY)
    stored = vectors(2)
    segment = cache.add(hashes("a", "b"), stored)
    data = bytearray(segment.read_bytes())
    data[data.index(stored.tobytes()) + 5] ^= 0x01  # the zip's CRC-32 covers the array bytes
    segment.write_bytes(bytes(data))
    assert cache.lookup(hashes("a", "b")).missing == [0, 1]


def test_a_writer_killed_before_its_rename_leaves_no_segment(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path, KEY)
    cache.add(hashes("a"), vectors(1))
    (cache.folder / ".tmp-killed.npz").write_bytes(b"PK\x03\x04 half a zip")
    assert cache.segments() == [next(cache.folder.glob("seg-*.npz"))]
    assert cache.lookup(hashes("a")).missing == []


def _add_many(root: str, start: int) -> None:
    cache = EmbeddingCache(Path(root), KEY)
    for i in range(start, start + 20):
        cache.add(hashes(f"doc {i}"), vectors(1, seed=i))


def test_two_processes_adding_at_once_lose_nothing(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_add_many, args=(str(tmp_path), start)) for start in (0, 20)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
    assert [writer.exitcode for writer in writers] == [0, 0]
    found = EmbeddingCache(tmp_path, KEY).lookup(hashes(*(f"doc {i}" for i in range(40))))
    assert found.missing == []
    np.testing.assert_array_equal(found.vectors[25], vectors(1, seed=25)[0])


def test_many_segments_are_merged_into_one_keeping_every_vector(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embedding_cache, "MERGE_ABOVE", 4)
    cache = EmbeddingCache(tmp_path, KEY)
    for i in range(6):
        cache.add(hashes(f"doc {i}", "shared"), vectors(2, seed=i))
    found = cache.lookup(hashes(*(f"doc {i}" for i in range(6))))
    assert len(cache.segments()) == 1
    assert found.missing == []
    np.testing.assert_array_equal(found.vectors[3], vectors(2, seed=3)[0])
