"""Micro-batching: concurrent queries embedded in one call instead of each alone.

Under concurrent load each request used to run its own small matmul chain, all of them fighting for the same
cores; one batched call does the same work at a fraction of the cost (the dynamic batching of Triton and Text
Embeddings Inference). The first query to arrive waits up to ``max_wait_s`` for others (or until ``max_batch`` are
queued), then one thread embeds them together and hands each caller its row. A lone query waits ``max_wait_s``
at most; ``max_wait_s = 0`` turns batching off.

Rows are what the query would get alone (padding is masked out of the pooling). A batch that fails is retried one
query at a time, so only the query that cannot be embedded gets the error.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

Encode = Callable[[object, list[str]], np.ndarray]


@dataclass
class _Pending:
    key: Hashable  # queries are batched only with others for the same served version
    context: object
    text: str
    future: Future = field(default_factory=Future)


class MicroBatcher:
    def __init__(self, encode: Encode, max_wait_s: float = 0.002, max_batch: int = 32) -> None:
        if max_wait_s < 0 or max_batch < 1:
            raise ValueError(f"micro-batching needs max_wait_s >= 0 and max_batch >= 1, got {max_wait_s}, {max_batch}")
        self.encode_many, self.max_wait_s, self.max_batch = encode, max_wait_s, max_batch
        self._queue: queue.Queue[_Pending] = queue.Queue()
        self.batches = 0
        self.queries = 0
        self._worker = threading.Thread(target=self._run, name="query-micro-batcher", daemon=True)
        self._worker.start()

    def encode(self, key: Hashable, context: object, text: str) -> np.ndarray:
        """``text``'s embedding (a ``(1, dim)`` row), computed in a batch with whatever else arrives meanwhile;
        alone, in this thread, should the batching thread ever have died."""
        if not self._worker.is_alive():
            return self.encode_many(context, [text])
        pending = _Pending(key, context, text)
        self._queue.put(pending)
        return pending.future.result()

    def _run(self) -> None:
        try:
            self._loop()
        finally:  # whatever ended the loop, nobody waits forever: the queued queries are answered alone
            while not self._queue.empty():
                item = self._queue.get_nowait()
                try:
                    item.future.set_result(self.encode_many(item.context, [item.text]))
                except Exception as err:  # noqa: BLE001 - delivered to that query's caller
                    item.future.set_exception(err)

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            batch = [first]
            deadline = time.monotonic() + self.max_wait_s
            while len(batch) < self.max_batch:
                remaining = deadline - time.monotonic()
                try:
                    item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                batch.append(item)
            groups: dict[Hashable, list[_Pending]] = {}
            for item in batch:
                groups.setdefault(item.key, []).append(item)
            for items in groups.values():
                self._answer(items)

    def _answer(self, items: list[_Pending]) -> None:
        self.batches += 1
        self.queries += len(items)
        try:
            vectors = self.encode_many(items[0].context, [item.text for item in items])
        except Exception:  # noqa: BLE001 - find the query that failed; the others are answered
            for item in items:
                try:
                    item.future.set_result(self.encode_many(item.context, [item.text]))
                except Exception as err:  # noqa: BLE001 - delivered to that query's caller
                    item.future.set_exception(err)
            return
        for row, item in enumerate(items):
            item.future.set_result(vectors[row : row + 1])
