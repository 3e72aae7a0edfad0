"""QA pairs to a dataset: passages de-duplicated against the corpus and each other."""

from __future__ import annotations

from denseflow.model.config import DataConfig
from denseflow.model.data.assemble import (
    passage_hash,
    query_id,
    query_key,
)
from denseflow.model.data.beir import RejectLog, load_beir
from denseflow.model.data.clicks import load_clicks
from denseflow.model.data.qa import load_qa
from tests.click_logs import click_config, page, positives_of, write_jsonl


def test_qa_passages_deduplicate_against_the_corpus_and_each_other(tmp_path, tiny_beir_dir):
    corpus = load_beir(tiny_beir_dir, ["train"], RejectLog()).corpus
    known = corpus["heart-d0"].text
    rows = [
        {"question": "What is a heart?", "answer": "  " + known.upper().replace(" ", "   ")},
        {"question": "what is  a HEART?", "answer": "A new passage about valves.", "title": "Valves"},
        {"question": "Valves?", "answer": "a new   passage about VALVES.", "id": "custom-id"},
        {"question": "Which valve?", "answer": "Another passage.", "id": "valve-2"},
    ]
    log = write_jsonl(tmp_path / "qa.jsonl", rows)
    config = DataConfig(source="qa", path=log, corpus=tiny_beir_dir, splits={"train": 1.0}, judged_eval=True)
    result = load_qa(config, RejectLog())

    new_id = "p" + passage_hash("A new passage about valves.")[:16]
    assert positives_of(result, "What is a heart?") == {"heart-d0", new_id}  # one query, two passages
    assert positives_of(result, "valves?") == {new_id}  # same content under a given id: still one passage
    assert positives_of(result, "which valve?") == {"valve-2"}
    assert len(result.dataset.corpus) == len(corpus) + 2
    assert result.dataset.corpus[new_id].title == "Valves"
    assert (result.report.passages_added, result.report.passages_deduplicated) == (2, 2)

    # The same query text from a click log is the same query: same id, same split.
    clicks = write_jsonl(tmp_path / "clicks.jsonl", page("WHAT is a heart?", ["heart-d1"], {1: 99.0}, "i1"))
    from_clicks = load_clicks(click_config(clicks, tiny_beir_dir), RejectLog())
    assert set(from_clicks.dataset.qrels["train"]) & set(result.dataset.qrels["train"]) == {
        query_id(query_key("what is a heart?"))
    }


def test_qa_without_a_corpus_builds_one_from_the_passages(tmp_path):
    rows = [{"question": f"question {i}", "answer": f"passage {i % 5}"} for i in range(40)]
    log = write_jsonl(tmp_path / "qa.jsonl", rows)
    result = load_qa(DataConfig(source="qa", path=log, splits={"train": 0.5, "test": 0.5}), RejectLog())
    assert len(result.dataset.corpus) == 5
    assert sum(result.report.split_queries.values()) == 40
