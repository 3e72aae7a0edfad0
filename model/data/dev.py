"""The dev split: where every choice (checkpoint, interpolation, fusion weight, served mode) is made, so test is
read once.

A dataset that ships a dev split keeps it. Otherwise dev is carved from the train queries by **document groups**:
the connected components of the train query–document judgment graph (a query and a document are linked when the
document is judged relevant for the query). Each group goes to dev or to train whole, so no dev query shares a
judged document with a training query, and dev measures what a retrain is for: documents the model has not been
trained on. Collections whose queries come in families over the same documents (SciFact's claims) otherwise reward
memorisation on dev, and the recipe that memorises most wins.

A group's side comes from a stable hash of its smallest document hash, so appending queries never moves an
existing group, except when a new query joins two groups (they merge, and the merged group takes the side of
the smaller hash). When one group holds most train queries (a dense judgment graph: click logs on a few popular
documents) no group split can give dev a share of queries: then dev falls back to the query-id hash, and the
result says so.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from denseflow.model.data.beir import Dataset

_HASH_DIGITS = 15
# Above this share of train queries in one group, the group split cannot carve a dev split of the asked share.
MAX_GROUP_SHARE = 0.5

DevMethod = Literal["shipped", "document groups", "query hash", "none"]


def _unit_hash(key: str) -> float:
    return int(hashlib.sha256(f"dev:{key}".encode()).hexdigest()[:_HASH_DIGITS], 16) / 16**_HASH_DIGITS


def in_dev(query_id: str, share: float) -> bool:
    """True for about ``share`` of all ids, always the same ones."""
    return _unit_hash(query_id) < share


@dataclass(frozen=True)
class DevSplit:
    """How dev was made: the method, its query count, and the group structure it was carved from."""

    method: DevMethod
    queries: int
    groups: int = 0
    largest_group_share: float = 0.0
    reason: str = ""

    def as_tags(self) -> dict[str, str]:
        return {"data.dev_method": self.method, "data.dev_reason": self.reason}


def judgment_groups(qrels: Mapping[str, Mapping[str, int]]) -> list[list[str]]:
    """Query ids grouped by the connected components of the query–document graph of positive judgments.

    Queries inside a group are sorted; a query with no positive judgment is a group of its own.
    """
    parent: dict[str, str] = {}

    def find(node: str) -> str:
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    def union(a: str, b: str) -> None:
        root_a, root_b = find(a), find(b)
        if root_a != root_b:
            parent[max(root_a, root_b)] = min(root_a, root_b)

    for query_id, judged in qrels.items():
        query_node = f"q\0{query_id}"
        parent.setdefault(query_node, query_node)
        for doc_id, score in judged.items():
            if score > 0:
                doc_node = f"d\0{doc_id}"
                parent.setdefault(doc_node, doc_node)
                union(query_node, doc_node)
    members: dict[str, list[str]] = {}
    for node in parent:
        kind, name = node.split("\0", 1)
        if kind == "q":
            members.setdefault(find(node), []).append(name)
    return [sorted(queries) for queries in members.values()]


def _group_key(group: list[str], qrels: Mapping[str, Mapping[str, int]]) -> str:
    docs = {doc_id for query_id in group for doc_id, score in qrels[query_id].items() if score > 0}
    names = [f"d:{doc_id}" for doc_id in docs] or [f"q:{query_id}" for query_id in group]
    return min(hashlib.sha256(name.encode()).hexdigest() for name in names)


def carve_dev_split(
    dataset: Dataset, train_split: str, dev_split: str, share: float, min_train_queries: int
) -> DevSplit:
    """Move about ``share`` of ``train_split``'s queries into ``dev_split``, by document group.

    Keeps a shipped ``dev_split`` as it is; carves nothing when the train split has fewer than
    ``min_train_queries`` queries or ``share`` is 0 (too few queries to both train and select on).
    """
    if dataset.qrels.get(dev_split):
        return DevSplit("shipped", len(dataset.qrels[dev_split]), reason="the dataset ships a dev split")
    train = dataset.qrels[train_split]
    if share <= 0 or len(train) < min_train_queries:
        reason = f"{len(train)} train queries (data.min_dev_train_queries {min_train_queries}, dev_share {share:g})"
        return DevSplit("none", 0, reason=reason)
    groups = judgment_groups(train)
    largest = max(len(group) for group in groups) / len(train)
    if largest <= MAX_GROUP_SHARE:
        dev = [q for group in groups if _unit_hash(_group_key(group, train)) < share for q in group]
        method: DevMethod = "document groups"
        reason = (
            f"{len(groups)} document groups (largest {largest:.0%} of train queries): dev shares no judged "
            "document with train"
        )
    else:
        dev = [query_id for query_id in train if in_dev(query_id, share)]
        method = "query hash"
        reason = (
            f"one document group holds {largest:.0%} of train queries: dev carved by query hash, so dev queries "
            "may share judged documents with train"
        )
    if not dev or len(dev) == len(train):
        return DevSplit("none", 0, len(groups), largest, f"the carve left no queries on one side ({reason})")
    dataset.qrels[dev_split] = {query_id: train.pop(query_id) for query_id in sorted(dev)}
    return DevSplit(method, len(dev), len(groups), largest, reason)
