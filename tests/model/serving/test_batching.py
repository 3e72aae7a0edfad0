"""Micro-batching: concurrent queries embedded in one call, each answered with its own row."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from denseflow.model.serving.batching import MicroBatcher


def fake_encode(calls: list[list[str]]):  # noqa: ANN201 - an Encode that records its batches
    def encode(_: object, texts: list[str]) -> np.ndarray:
        calls.append(list(texts))
        if "" in texts:
            raise ValueError("empty query")
        return np.array([[len(text), ord(text[0])] for text in texts], dtype=np.float32)

    return encode


def ask_at_once(batcher: MicroBatcher, texts: list[str]) -> dict[str, object]:
    answers: dict[str, object] = {}
    start = threading.Barrier(len(texts))

    def ask(text: str) -> None:
        start.wait()
        try:
            answers[text] = batcher.encode("v1", None, text)
        except ValueError as err:
            answers[text] = err

    threads = [threading.Thread(target=ask, args=(text,)) for text in texts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    return answers


def test_concurrent_queries_are_embedded_together_and_each_gets_its_own_row():
    calls: list[list[str]] = []
    batcher = MicroBatcher(fake_encode(calls), max_wait_s=0.2, max_batch=8)
    texts = ["alpha", "bb", "gamma ray", "d"]
    answers = ask_at_once(batcher, texts)
    for text in texts:
        np.testing.assert_array_equal(answers[text], [[len(text), ord(text[0])]])
    assert len(calls) < len(texts)  # fewer calls than queries: they were batched


def test_one_failing_query_gets_its_error_and_the_others_are_answered():
    calls: list[list[str]] = []
    batcher = MicroBatcher(fake_encode(calls), max_wait_s=0.2, max_batch=8)
    answers = ask_at_once(batcher, ["alpha", "", "beta"])
    assert isinstance(answers[""], ValueError)
    np.testing.assert_array_equal(answers["alpha"], [[5, ord("a")]])
    np.testing.assert_array_equal(answers["beta"], [[4, ord("b")]])


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(fake_encode([]), max_wait_s=0.01, max_batch=0)
