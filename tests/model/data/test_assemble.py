"""Query ids and splits by hash: appending data never moves a query; the salt reshuffles."""

from __future__ import annotations

import csv
import gzip

from denseflow.model.config import DataConfig
from denseflow.model.data.assemble import (
    assign_split,
    query_id,
    query_key,
)
from denseflow.model.data.beir import Dataset, RejectLog
from denseflow.model.data.qa import load_qa
from tests.click_logs import write_jsonl


def qa_rows(start: int, stop: int) -> list[dict]:
    return [{"question": f"Question number {i}?", "answer": f"Passage {i}."} for i in range(start, stop)]


def split_of(dataset: Dataset) -> dict[str, str]:
    where: dict[str, str] = {}
    for split, judged in dataset.qrels.items():
        for qid in judged:
            assert qid not in where, f"{qid} in two splits"
            where[qid] = split
    return where


def test_appending_data_never_moves_a_query(tmp_path):
    folder = tmp_path / "logs"
    folder.mkdir()
    write_jsonl(folder / "day1.jsonl", qa_rows(0, 150))
    shares = {"train": 0.6, "dev": 0.2, "test": 0.2}
    before = split_of(load_qa(DataConfig(source="qa", path=folder, splits=shares), RejectLog()).dataset)

    # A second day: new questions, and old questions asked again with new passages, in a gzipped CSV.
    with gzip.open(folder / "day2.csv.gz", "wt", newline="") as out:
        writer = csv.DictWriter(out, ["question", "answer"])
        writer.writeheader()
        writer.writerows(qa_rows(150, 300) + [{"question": "question  NUMBER 7?", "answer": "More."}])
    after_dataset = load_qa(DataConfig(source="qa", path=folder, splits=shares), RejectLog()).dataset
    after = split_of(after_dataset)

    assert len(before) == 150
    assert len(after) == 300
    assert all(after[qid] == split for qid, split in before.items())
    assert (
        len(after_dataset.qrels[before[query_id(query_key("Question number 7?"))]][query_id("question number 7?")]) == 2
    )
    counts = {name: sum(1 for s in after.values() if s == name) for name in shares}
    assert 140 <= counts["train"] <= 220
    assert counts["dev"] >= 30
    assert counts["test"] >= 30


def test_split_assignment_is_deterministic_and_salted():
    shares = {"train": 0.8, "test": 0.2}
    keys = [f"query {i}" for i in range(200)]
    first = [assign_split(key, shares, "a") for key in keys]
    assert first == [assign_split(key, dict(shares), "a") for key in keys]
    assert first != [assign_split(key, shares, "b") for key in keys]
    assert assign_split("anything", {"train": 1.0, "test": 0.0}, "a") == "train"
