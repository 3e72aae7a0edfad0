"""Click logs to a dataset: the dwell and CTR rules, propensity, skip-above negatives, pages, rejects."""

from __future__ import annotations

import json

import pytest

from denseflow.model.config import ClickConfig, DataConfig
from denseflow.model.data import io as reasons
from denseflow.model.data.assemble import (
    query_id,
    query_key,
    read_skip_above,
    write_source,
)
from denseflow.model.data.beir import DataError, RejectLog, load_beir
from denseflow.model.data.clicks import Propensity, load_clicks
from denseflow.model.data.ingest import ingest
from denseflow.model.data.io import REASONS
from denseflow.model.data.qa import load_qa
from denseflow.model.mining.negatives import mine_negatives, read_examples, write_examples
from tests.click_logs import click_config, page, positives_of, write_jsonl


def test_dwell_rule_needs_satisfied_clicks(tmp_path, tiny_beir_dir):
    docs = ["heart-d0", "heart-d1", "heart-d2", "heart-d3"]
    rows = page("heart attack", docs, {1: 45.0, 2: 5.0, 3: None}, "i1")
    rows += page("heart attack", docs, {2: 30.0}, "i2")  # exactly the threshold counts
    log = write_jsonl(tmp_path / "clicks.jsonl", rows)

    result = load_clicks(click_config(log, tiny_beir_dir, rule="dwell", dwell_threshold=30), RejectLog())
    assert positives_of(result, "heart attack") == {"heart-d0", "heart-d1"}
    assert result.report.clicks == 4
    assert result.report.impressions == 2

    rows += page("heart attack", docs, {1: 300.0}, "i3")
    log = write_jsonl(tmp_path / "clicks.jsonl", rows)
    strict = load_clicks(click_config(log, tiny_beir_dir, dwell_threshold=30, min_satisfied_clicks=2), RejectLog())
    assert positives_of(strict, "heart attack") == {"heart-d0"}


def test_dwell_rule_with_no_positive_at_all_is_a_clear_error(tmp_path, tiny_beir_dir):
    log = write_jsonl(tmp_path / "clicks.jsonl", page("heart attack", ["heart-d0"], {1: 2.0}, "i1"))
    with pytest.raises(DataError, match="split 'train' has no queries with a positive"):
        load_clicks(click_config(log, tiny_beir_dir), RejectLog())


def test_ctr_rule_with_minimum_impressions(tmp_path, tiny_beir_dir):
    rows = []
    for i in range(6):
        docs = (["brain-d0"] if i < 4 else ["brain-d5"]) + ["brain-d1", "brain-d2"]
        clicked = {1: 20.0} if i < 3 else {}  # brain-d0: 3 clicks in 4 impressions
        clicked |= {2: 20.0} if i < 2 else {}  # brain-d1: 2 in 6
        clicked |= {3: 20.0} if i == 5 else {}  # brain-d2: 1 in 6
        rows += page("brain memory", docs, clicked, f"i{i}")
    log = write_jsonl(tmp_path / "clicks.jsonl", rows)

    result = load_clicks(
        click_config(log, tiny_beir_dir, rule="ctr", ctr_threshold=0.3, min_impressions=5), RejectLog()
    )
    assert positives_of(result, "brain memory") == {"brain-d1"}  # brain-d0 has too few impressions to decide
    looser = load_clicks(
        click_config(log, tiny_beir_dir, rule="ctr", ctr_threshold=0.3, min_impressions=4), RejectLog()
    )
    assert positives_of(looser, "brain memory") == {"brain-d0", "brain-d1"}


def test_inverse_propensity_lifts_documents_shown_low(tmp_path, tiny_beir_dir):
    docs = ["gene-d0", "gene-d1", "gene-d2", "gene-d3", "gene-d4"]
    rows = []
    for i in range(10):
        clicked = {5: 40.0} if i == 0 else {}  # gene-d4 at position 5: raw CTR 0.1
        clicked |= {1: 40.0} if i < 2 else {}  # gene-d0 at position 1: raw CTR 0.2
        rows += page("gene expression", docs, clicked, f"i{i}")
    log = write_jsonl(tmp_path / "clicks.jsonl", rows)
    rule = {"rule": "ctr", "ctr_threshold": 0.3, "min_impressions": 5}

    with pytest.raises(DataError):  # raw CTR: neither document reaches 0.3
        load_clicks(click_config(log, tiny_beir_dir, **rule), RejectLog())
    power = load_clicks(click_config(log, tiny_beir_dir, **rule, propensity="power"), RejectLog())
    assert positives_of(power, "gene expression") == {"gene-d4"}  # 0.1 × 5 = 0.5; position 1 keeps weight 1
    table = load_clicks(
        click_config(log, tiny_beir_dir, **rule, propensity="table", propensity_table=[1.0, 0.6, 0.4, 0.3, 0.2]),
        RejectLog(),
    )
    assert positives_of(table, "gene expression") == {"gene-d4"}
    flat = ClickConfig(rule="ctr", propensity="table", propensity_table=[1.0])
    assert Propensity(flat).weight(7) == 1.0  # positions past the table use its last value


def test_propensity_weights_are_clipped():
    config = ClickConfig(propensity="power", propensity_power=1.0, propensity_floor=0.05)
    assert Propensity(config).weight(2) == pytest.approx(2.0)
    assert Propensity(config).weight(100) == pytest.approx(20.0)
    assert Propensity(ClickConfig()).weight(100) == 1.0
    with pytest.raises(ValueError, match="propensity_table"):
        ClickConfig(propensity="table")


def test_skip_above_documents_become_marked_hard_negatives(tmp_path, tiny_beir_dir):
    docs = ["virus-d0", "virus-d1", "virus-d2", "virus-d3"]
    rows = page("viral infection", docs, {3: 60.0}, "i1")  # virus-d0 and virus-d1 skipped, virus-d3 below
    rows += page("viral infection", docs, {1: 60.0}, "i2")  # virus-d0 is also a positive: never a negative
    rows += page("viral infection", ["virus-d4", "virus-d1", "virus-d2"], {3: 90.0}, "i3")  # virus-d1 twice
    log = write_jsonl(tmp_path / "clicks.jsonl", rows)

    result = load_clicks(click_config(log, tiny_beir_dir), RejectLog())
    qid = query_id(query_key("viral infection"))
    assert set(result.dataset.qrels["train"][qid]) == {"virus-d0", "virus-d2"}
    assert result.skip_above[qid] == ["virus-d1", "virus-d4"]  # most skipped first
    assert result.report.skip_above_dropped_as_positive == 1

    folder = write_source(result, tmp_path / "data")
    assert read_skip_above(folder) == result.skip_above
    dataset = load_beir(folder, ["train", "test"], RejectLog())
    examples, report = mine_negatives(
        dataset, "train", num_negatives=2, seed=0, extra_negatives=read_skip_above(folder), max_extra=1
    )
    assert len(examples) == 2
    for example in examples:
        first, second = example.negatives
        assert (first.doc_id, first.source, first.rank) == ("virus-d1", "skip_above", None)
        assert second.source == "random"
        assert second.doc_id not in {"virus-d0", "virus-d1", "virus-d2"}
    path = write_examples(examples, tmp_path / "train_examples.jsonl")
    assert read_examples(path)[0].negatives[0].source == "skip_above"

    one_open_page = load_clicks(click_config(log, tiny_beir_dir, impression_buffer=1), RejectLog())
    assert one_open_page.skip_above == result.skip_above  # a page's rows are contiguous: closing early loses nothing

    fewer = load_clicks(click_config(log, tiny_beir_dir, min_skips=2), RejectLog())
    assert fewer.skip_above[qid] == ["virus-d1"]
    none = load_clicks(click_config(log, tiny_beir_dir, skip_above=False), RejectLog())
    assert none.skip_above == {}
    write_source(none, folder)
    assert read_skip_above(folder) == {}  # the stale file of the earlier ingest is gone
    assert result.fingerprint != none.fingerprint  # skip-above negatives are training data too


def test_extra_negatives_keep_the_judged_guard(tiny_beir_dir):
    dataset = load_beir(tiny_beir_dir, ["train", "test"], RejectLog())
    extras = {"heart-q0": ["heart-d0", "no-such-doc", "heart-d5", "heart-d4"]}  # heart-d0 is q0's positive
    examples, report = mine_negatives(dataset, "train", num_negatives=2, seed=1, extra_negatives=extras)
    by_query = {example.query_id: example for example in examples}
    assert [(n.doc_id, n.source) for n in by_query["heart-q0"].negatives] == [
        ("heart-d5", "skip_above"),
        ("heart-d4", "skip_above"),
    ]
    assert report.guards["judged_positive"] == 1
    assert report.guards["extra_unknown"] == 1
    assert all(n.source == "random" for n in by_query["heart-q1"].negatives)


def test_pages_without_impression_id_group_by_session_and_time(tmp_path, tiny_beir_dir):
    rows = page("bone fracture", ["bone-d0", "bone-d1"], {2: 50.0}, "x")
    rows += page("bone fracture", ["bone-d1", "bone-d2"], {1: 50.0}, "x", session_id="s2")  # another page
    for row in rows:
        del row["impression_id"]
    log = write_jsonl(tmp_path / "clicks.jsonl", rows)
    result = load_clicks(click_config(log, tiny_beir_dir), RejectLog())
    assert result.report.impressions == 2
    assert result.skip_above[query_id(query_key("bone fracture"))] == ["bone-d0"]


def test_every_reject_reason_is_recorded_with_file_line_and_field(tmp_path, tiny_beir_dir):
    good = []
    for i in range(8):
        good += page("cancer tumor", ["cancer-d0", "cancer-d1", "cancer-d2"], {2: 80.0}, f"g{i}")
    base = {"query": "cancer tumor", "doc_id": "cancer-d3", "position": 4, "clicked": False, "impression_id": "b"}
    bad_rows: list[tuple[object, str, str | None]] = [
        ("{not json", reasons.MALFORMED, None),
        ("[1, 2]", reasons.MALFORMED, None),
        (json.dumps(base | {"query": "x" * 400}), reasons.LINE_TOO_LONG, None),
        (json.dumps(base | {"query": "y" * 5000}), reasons.LINE_TOO_LONG, None),  # many bounded reads
        ({k: v for k, v in base.items() if k != "doc_id"}, reasons.MISSING_FIELD, "doc_id"),
        (base | {"query": "   "}, reasons.MISSING_FIELD, "query"),
        (base | {"clicked": None}, reasons.MISSING_FIELD, "clicked"),
        (base | {"doc_id": "no-such-doc"}, reasons.UNKNOWN_DOC, "doc_id"),
        (base | {"position": "first"}, reasons.BAD_POSITION, "position"),
        (base | {"position": 0}, reasons.BAD_POSITION, "position"),
        (base | {"clicked": "maybe"}, reasons.BAD_CLICKED, "clicked"),
        (base | {"dwell": "long"}, reasons.BAD_DWELL, "dwell"),
        (base | {"clicked": True, "dwell": -3}, reasons.NEGATIVE_DWELL, "dwell"),
        (base | {"timestamp": "yesterday"}, reasons.BAD_TIMESTAMP, "timestamp"),
        (base | {"doc_id": "cancer-d0", "impression_id": "g0"}, reasons.DUPLICATE_IMPRESSION_ROW, "doc_id"),
    ]
    path = tmp_path / "clicks.jsonl"
    with path.open("wb") as out:
        for row in good[:12]:
            out.write(json.dumps(row).encode() + b"\n")
        out.write(b'{"query": "caf\xe9", "doc_id": "cancer-d0", "position": 1, "clicked": true}\n')  # Latin-1
        for row, _, _ in bad_rows:
            out.write((row if isinstance(row, str) else json.dumps(row)).encode() + b"\n")
        for row in good[12:]:
            out.write(json.dumps(row).encode() + b"\n")
    config = click_config(path, tiny_beir_dir)
    config = config.model_copy(update={"max_line_bytes": 300, "min_usable_share": 0.5})
    rejects = RejectLog()
    result = load_clicks(config, rejects)

    expected = [(13, reasons.NOT_UTF8, None)] + [
        (14 + i, reason, field) for i, (_, reason, field) in enumerate(bad_rows)
    ]
    assert [(r["line"], r["reason"], r["field"]) for r in rejects.rows] == expected
    assert all(r["file"] == str(path) for r in rejects.rows)
    assert result.report.usable_rows == len(good)
    assert result.report.rejected_rows == len(expected)
    assert result.report.reject_reasons[reasons.MALFORMED] == 2

    # The reasons a click log cannot produce: a QA id clash and a source query that is an evaluation query.
    eval_text = load_beir(tiny_beir_dir, ["test"], RejectLog()).queries["heart-q4"]
    qa_rows_ = [
        {"question": "q1", "answer": "a fresh passage", "id": "heart-d0"},
        {"question": eval_text, "answer": "x"},
    ]
    qa = write_jsonl(tmp_path / "qa.jsonl", qa_rows_ + [{"question": f"q{i}", "answer": f"p{i}"} for i in range(8)])
    qa_config = DataConfig(source="qa", path=qa, corpus=tiny_beir_dir, judged_eval=True, splits={"train": 1.0})
    qa_rejects = RejectLog()
    load_qa(qa_config, qa_rejects)
    assert [(r["line"], r["field"], r["reason"]) for r in qa_rejects.rows] == [
        (1, "id", reasons.ID_CONFLICT),
        (None, "query", reasons.EVAL_QUERY),
    ]
    beir_only = {
        reasons.EMPTY_TEXT,
        reasons.DUPLICATE_ID,
        reasons.UNKNOWN_QUERY,
        reasons.BAD_SCORE,
        reasons.DUPLICATE_JUDGMENT,
        reasons.EVAL_LEAK,
    }
    assert set(rejects.counts()) | set(qa_rejects.counts()) == set(REASONS) - beir_only


def test_renamed_columns(tmp_path, tiny_beir_dir):
    rows = [{"q": "heart", "doc": "heart-d2", "rank": 1, "click": 1, "dwell": 40}]
    log = write_jsonl(tmp_path / "clicks.jsonl", rows)
    config = click_config(log, tiny_beir_dir).model_copy(
        update={"fields": {"query": "q", "doc_id": "doc", "position": "rank", "clicked": "click"}}
    )
    assert positives_of(load_clicks(config, RejectLog()), "heart") == {"heart-d2"}
    with pytest.raises(DataError, match="unknown field"):
        load_clicks(config.model_copy(update={"fields": {"querry": "q"}}), RejectLog())


def test_too_few_usable_rows_fail_with_the_reasons(tmp_path, tiny_beir_dir):
    rows = page("heart", ["heart-d0", "heart-d1", "heart-d2"], {1: 50.0}, "i1")
    rows += [{"query": "heart", "doc_id": f"missing-{i}", "position": 1, "clicked": False} for i in range(7)]
    log = write_jsonl(tmp_path / "clicks.jsonl", rows)
    config = click_config(log, tiny_beir_dir)
    with pytest.raises(DataError, match=r"only 3 of 10 rows usable \(30.0%\).*unknown document id: 7"):
        ingest(config, tmp_path / "out")
    assert len((tmp_path / "out" / "rejects.jsonl").read_text().splitlines()) == 7
    assert ingest(config.model_copy(update={"min_usable_share": 0.3}), tmp_path / "ok").report.usable_rows == 3
