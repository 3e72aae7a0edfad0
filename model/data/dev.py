"""The dev split: where every choice (checkpoint, fusion weight, recipe) is made, so test is read once.

A dataset that ships a dev split keeps it. Otherwise dev is carved from the train queries by a hash of the query
id: the same query always lands on the same side, so appending data never moves a query between train and dev.
"""

from __future__ import annotations

import hashlib

from denseflow.model.data.beir import Dataset

_HASH_DIGITS = 15


def in_dev(query_id: str, share: float) -> bool:
    """True for about ``share`` of all ids, always the same ones."""
    value = int(hashlib.sha256(f"dev:{query_id}".encode()).hexdigest()[:_HASH_DIGITS], 16)
    return value / 16**_HASH_DIGITS < share


def carve_dev_split(dataset: Dataset, train_split: str, dev_split: str, share: float, min_train_queries: int) -> int:
    """Move about ``share`` of ``train_split``'s queries into ``dev_split``; returns the dev query count.

    Does nothing (returns the existing count) when ``dev_split`` already has judgments, and returns 0 without
    carving when the train split has fewer than ``min_train_queries`` queries or ``share`` is 0: too few
    queries to both train and select on.
    """
    if dataset.qrels.get(dev_split):
        return len(dataset.qrels[dev_split])
    train = dataset.qrels[train_split]
    if share <= 0 or len(train) < min_train_queries:
        return 0
    dev = {query_id: judged for query_id, judged in train.items() if in_dev(query_id, share)}
    if not dev or len(dev) == len(train):
        return 0
    for query_id in dev:
        del train[query_id]
    dataset.qrels[dev_split] = dev
    return len(dev)
