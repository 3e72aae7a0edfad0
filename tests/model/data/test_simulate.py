"""The synthetic click log: position bias, relevance-driven clicks and dwell, determinism, and label quality."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np

from denseflow.model.config import DataConfig
from denseflow.model.data.beir import RejectLog, load_beir
from denseflow.model.data.clicks import load_clicks
from denseflow.model.data.simulate import ClickModel, label_quality, meta_path, simulate_clicks


def simulate(tmp_path, tiny_beir_dir, name="clicks.jsonl", **model):
    dataset = load_beir(tiny_beir_dir, ["train", "test"], RejectLog())
    settings = ClickModel(**({"impressions_per_query": 40.0, "top_k": 8} | model))
    report = simulate_clicks(dataset, "train", tmp_path / name, settings)
    return dataset, report, tmp_path / name


def click_rates(rows, relevant_of) -> dict[bool, np.ndarray]:
    """Click-through rate per position (index 0 = position 1), for relevant and non-relevant results."""
    shown = {True: np.zeros(8), False: np.zeros(8)}
    clicked = {True: np.zeros(8), False: np.zeros(8)}
    for row in rows:
        relevant = relevant_of(row)
        shown[relevant][row["position"] - 1] += 1
        clicked[relevant][row["position"] - 1] += row["clicked"]
    return {key: clicked[key] / np.maximum(shown[key], 1) for key in shown}


def test_clicks_follow_examination_by_position(tmp_path, tiny_beir_dir):
    # A user who ignores relevance: the click-through rate is the examination probability times 0.5.
    dataset, _, log = simulate(tmp_path, tiny_beir_dir, click_relevant=0.5, click_nonrelevant=0.5)
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    overall = sum(click_rates(rows, lambda row: True).values())
    expected = 0.5 / np.arange(1, 9)
    assert np.abs(overall - expected).max() < 0.06
    assert overall[0] > 4 * overall[7]


def test_log_is_driven_by_relevance(tmp_path, tiny_beir_dir):
    dataset, report, log = simulate(tmp_path, tiny_beir_dir)
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(rows) == report.rows == report.impressions * 8
    assert report.impressions == 24 * 40
    assert report.clicks == sum(row["clicked"] for row in rows) > 0
    by_text = {dataset.queries[qid]: qid for qid in dataset.qrels["train"]}

    def relevant_of(row) -> bool:
        return dataset.qrels["train"][by_text[row["query"]]].get(row["doc_id"], 0) > 0

    rates = click_rates(rows, relevant_of)
    assert rates[True][0] > 0.8  # at position 1 everything is examined
    assert rates[False][0] < 0.2
    dwell = defaultdict(list)
    for row in rows:
        if row["clicked"]:
            dwell[relevant_of(row)].append(row["dwell"])
        else:
            assert row["dwell"] is None
    assert np.median(dwell[True]) > 3 * np.median(dwell[False])

    meta = json.loads(meta_path(log).read_text())
    assert meta["synthetic"] is True
    assert "SYNTHETIC" in meta["note"]
    sessions = defaultdict(list)
    for row in rows:
        sessions[row["session_id"]].append(row["timestamp"])
    assert all(times == sorted(times) for times in sessions.values())
    assert 1 < len(rows) / 8 / len(sessions) <= 3


def test_same_seed_same_log(tmp_path, tiny_beir_dir):
    _, _, first = simulate(tmp_path, tiny_beir_dir, "a.jsonl", impressions_per_query=3.0)
    _, _, second = simulate(tmp_path, tiny_beir_dir, "b.jsonl", impressions_per_query=3.0)
    _, _, other = simulate(tmp_path, tiny_beir_dir, "c.jsonl", impressions_per_query=3.0, seed=1)
    assert first.read_bytes() == second.read_bytes() != other.read_bytes()


def test_click_rules_recover_judged_positives(tmp_path, tiny_beir_dir):
    dataset, report, log = simulate(tmp_path, tiny_beir_dir, "clicks.jsonl.gz")
    config = DataConfig(source="clicks", path=log, corpus=tiny_beir_dir, judged_eval=True, splits={"train": 1.0})
    result = load_clicks(config.model_copy(update={"path": tmp_path}), RejectLog())  # the folder: log + .meta.json
    assert result.report.files == [str(log)]
    assert result.report.rows == report.rows
    assert result.report.rejected_rows == 0
    quality = label_quality(result.dataset.queries, result.dataset.qrels["train"], dataset, "train")
    assert quality["unmatched_queries"] == 0
    assert quality["precision"] > 0.6
    assert quality["recall"] > 0.6
    assert result.skip_above  # clicks below unclicked results happen

    perfect = label_quality(dataset.queries, dataset.qrels["train"], dataset, "train")
    assert perfect["precision"] == perfect["recall"] == 1.0
