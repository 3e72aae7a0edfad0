"""The dev split carved from train by document groups, or by query-id hash as the fallback (model/data/dev.py)."""

from __future__ import annotations

from denseflow.model.data.beir import Dataset, Document
from denseflow.model.data.dev import carve_dev_split, in_dev, judgment_groups


def dataset_with(train_ids: list[str], dev_ids: tuple[str, ...] = (), docs_per_query: int = 1) -> Dataset:
    """Train query ``qN`` judges document ``d{N // docs_per_query}``: groups of ``docs_per_query`` queries."""
    corpus = {"d": Document("t", "x")}
    qrels = {
        "train": {qid: {f"d{index // docs_per_query}": 1} for index, qid in enumerate(train_ids)},
        "test": {"t0": {"d": 1}},
    }
    if dev_ids:
        qrels["dev"] = {qid: {"d": 1} for qid in dev_ids}
    queries = {qid: qid for qid in [*train_ids, *dev_ids, "t0"]}
    return Dataset(corpus=corpus, queries=queries, qrels=qrels)


def test_about_the_share_of_train_queries_moves_to_dev_and_leaves_train():
    ids = [f"q{i}" for i in range(2000)]
    dataset = dataset_with(ids)
    count = carve_dev_split(dataset, "train", "dev", 0.1, 20).queries
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
    assert carve_dev_split(dataset, "train", "dev", 0.1, 20).queries == 2
    assert len(dataset.qrels["train"]) == 100


def test_too_few_train_queries_get_no_dev_split():
    dataset = dataset_with([f"q{i}" for i in range(19)])
    assert carve_dev_split(dataset, "train", "dev", 0.1, 20).queries == 0
    assert "dev" not in dataset.qrels
    assert len(dataset.qrels["train"]) == 19


def test_membership_depends_on_the_id_only():
    assert in_dev("query-42", 0.5) == in_dev("query-42", 0.5)
    assert not in_dev("query-42", 0.0)


def judged(dataset: Dataset, split: str) -> set[str]:
    return {doc_id for judgments in dataset.qrels[split].values() for doc_id in judgments}


def test_dev_queries_share_no_judged_document_with_train():
    dataset = dataset_with([f"q{i}" for i in range(600)], docs_per_query=3)
    split = carve_dev_split(dataset, "train", "dev", 0.1, 20)
    assert split.method == "document groups"
    assert split.queries > 0
    assert not judged(dataset, "dev") & judged(dataset, "train")


def test_a_group_moves_whole_and_appending_a_group_moves_no_other():
    before = dataset_with([f"q{i}" for i in range(300)], docs_per_query=3)
    after = dataset_with([f"q{i}" for i in range(600)], docs_per_query=3)
    carve_dev_split(before, "train", "dev", 0.1, 20)
    carve_dev_split(after, "train", "dev", 0.1, 20)
    assert set(before.qrels["dev"]) <= set(after.qrels["dev"])
    assert set(before.qrels["train"]) <= set(after.qrels["train"])


def test_judgment_groups_are_the_connected_components_of_the_judgment_graph():
    qrels = {"a": {"d1": 1}, "b": {"d1": 1, "d2": 1}, "c": {"d2": 1}, "e": {"d9": 1}, "f": {"d3": 0}}
    groups = judgment_groups(qrels)
    assert sorted(groups) == [["a", "b", "c"], ["e"], ["f"]]


def test_one_group_holding_most_queries_falls_back_to_the_query_hash_and_says_so():
    dataset = dataset_with([f"q{i}" for i in range(400)], docs_per_query=400)  # every query judges d0
    split = carve_dev_split(dataset, "train", "dev", 0.1, 20)
    assert split.method == "query hash"
    assert "100%" in split.reason
    assert 20 < split.queries < 70
