"""The dev split carved from train by query-id hash (model/data/dev.py)."""

from __future__ import annotations

from denseflow.model.data.beir import Dataset, Document
from denseflow.model.data.dev import carve_dev_split, in_dev


def dataset_with(train_ids: list[str], dev_ids: tuple[str, ...] = ()) -> Dataset:
    corpus = {"d": Document("t", "x")}
    qrels = {"train": {qid: {"d": 1} for qid in train_ids}, "test": {"t0": {"d": 1}}}
    if dev_ids:
        qrels["dev"] = {qid: {"d": 1} for qid in dev_ids}
    queries = {qid: qid for qid in [*train_ids, *dev_ids, "t0"]}
    return Dataset(corpus=corpus, queries=queries, qrels=qrels)


def test_about_the_share_of_train_queries_moves_to_dev_and_leaves_train():
    ids = [f"q{i}" for i in range(2000)]
    dataset = dataset_with(ids)
    count = carve_dev_split(dataset, "train", "dev", 0.1, 20)
    assert 150 < count < 250
    assert not set(dataset.qrels["dev"]) & set(dataset.qrels["train"])
    assert len(dataset.qrels["train"]) + count == 2000


def test_appending_queries_never_moves_an_existing_query():
    before = dataset_with([f"q{i}" for i in range(500)])
    after = dataset_with([f"q{i}" for i in range(1000)])
    carve_dev_split(before, "train", "dev", 0.1, 20)
    carve_dev_split(after, "train", "dev", 0.1, 20)
    assert set(before.qrels["dev"]) <= set(after.qrels["dev"])
    assert set(before.qrels["train"]) <= set(after.qrels["train"])


def test_a_shipped_dev_split_is_kept_as_it_is():
    dataset = dataset_with([f"q{i}" for i in range(100)], dev_ids=("v1", "v2"))
    assert carve_dev_split(dataset, "train", "dev", 0.1, 20) == 2
    assert len(dataset.qrels["train"]) == 100


def test_too_few_train_queries_get_no_dev_split():
    dataset = dataset_with([f"q{i}" for i in range(19)])
    assert carve_dev_split(dataset, "train", "dev", 0.1, 20) == 0
    assert "dev" not in dataset.qrels
    assert len(dataset.qrels["train"]) == 19


def test_membership_depends_on_the_id_only():
    assert in_dev("query-42", 0.5) == in_dev("query-42", 0.5)
    assert not in_dev("query-42", 0.0)
