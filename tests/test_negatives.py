"""Negative miners and their false-negative guards: random, BM25, dense, a hand-made scorer, and the mix."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from denseflow.model.data.beir import Dataset, Document, RejectLog, load_beir
from denseflow.model.mining.negatives import (
    TrainExample,
    make_scorer,
    mine_negatives,
    mining_summary,
    mix_examples,
    training_pairs,
)


@pytest.fixture()
def tiny(tiny_beir_dir) -> Dataset:
    return load_beir(tiny_beir_dir, ["train", "test"], RejectLog())


def judged(dataset: Dataset, query_id: str, split: str = "train") -> set[str]:
    return {doc for doc, rel in dataset.qrels[split][query_id].items() if rel > 0}


def assert_no_positive(dataset: Dataset, examples: list[TrainExample]) -> None:
    for example in examples:
        negatives = [neg.doc_id for neg in example.negatives]
        assert not set(negatives) & judged(dataset, example.query_id)
        assert len(set(negatives)) == len(negatives)


def test_random_negatives_are_reproducible_and_never_positive(tiny):
    examples, report = mine_negatives(tiny, "train", num_negatives=3, seed=7)
    again, _ = mine_negatives(tiny, "train", num_negatives=3, seed=7)
    other, _ = mine_negatives(tiny, "train", num_negatives=3, seed=8)
    assert examples == again
    assert examples != other
    assert report.examples == len(examples) == len(list(training_pairs(tiny, "train"))) == 24
    assert all(len(example.negatives) == 3 for example in examples)
    assert {neg.source for example in examples for neg in example.negatives} == {"random"}
    assert not report.guards  # random sampling excludes positives up front; no guard has anything to remove
    assert_no_positive(tiny, examples)


def test_bm25_guards_window_and_counts(tiny):
    scorer = make_scorer("bm25", tiny, "train")
    rank_start, rank_end = 2, 12
    examples, report = mine_negatives(
        tiny, "train", num_negatives=2, seed=3, scorer=scorer, source="bm25", rank_start=rank_start, rank_end=rank_end
    )
    assert_no_positive(tiny, examples)
    doc_ids = list(tiny.corpus)
    expected = Counter()
    for example in examples:
        scores = scorer(example.query_id)
        order = sorted(range(len(doc_ids)), key=lambda i: (-scores[i], i))[:rank_end]
        positives = judged(tiny, example.query_id)
        expected["judged_positive"] += sum(doc_ids[i] in positives for i in order)
        expected["rank_window"] += sum(doc_ids[i] not in positives for i in order[:rank_start])
        for neg in example.negatives:
            assert neg.source == "bm25"
            assert rank_start < neg.rank <= rank_end  # the window: top ranks skipped
            # The recorded rank is the real one (up to the order of exact ties, which the tiny corpus has).
            assert neg.score == float(scores[doc_ids.index(neg.doc_id)]) == float(scores[order[neg.rank - 1]])
    assert report.guards["judged_positive"] == expected["judged_positive"] > 0
    assert report.guards["rank_window"] == expected["rank_window"] > 0
    assert report.as_metrics()["removed_rank_window"] == expected["rank_window"]
    again, _ = mine_negatives(
        tiny, "train", num_negatives=2, seed=3, scorer=scorer, source="bm25", rank_start=rank_start, rank_end=rank_end
    )
    assert again == examples


def test_bm25_scores_are_computed_once_per_corpus(tiny):
    first = make_scorer("bm25", tiny, "train")
    second = make_scorer("bm25", tiny, "train")
    query_id = next(iter(tiny.qrels["train"]))
    assert first(query_id) is second(query_id)  # the study's seeds share the scores
    with pytest.raises(ValueError):
        first(query_id)[0] = 1.0


def hand_made() -> tuple[Dataset, np.ndarray]:
    """One query, positive d0 scored 1.0; d1, d2 above 95% of it; d3..d9 below, in falling order."""
    corpus = {f"d{i}": Document(f"t{i}", f"text {i}") for i in range(10)}
    dataset = Dataset(corpus=corpus, queries={"q": "query"}, qrels={"train": {"q": {"d0": 1}}})
    scores = np.array([1.0, 0.99, 0.97, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3], dtype=np.float32)
    return dataset, scores


def test_relative_margin_drops_candidates_too_close_to_the_positive():
    dataset, scores = hand_made()
    examples, report = mine_negatives(
        dataset, "train", 3, seed=0, scorer=lambda _: scores, source="dense", rank_start=0, rank_end=10,
        relative_margin=0.95,
    )  # fmt: skip
    (example,) = examples
    assert report.guards == Counter({"judged_positive": 1, "relative_margin": 2})
    assert all(neg.score <= 0.95 for neg in example.negatives)
    assert {neg.doc_id for neg in example.negatives} <= {f"d{i}" for i in range(3, 10)}


def test_rank_start_and_short_window_fall_back_to_counted_random():
    dataset, scores = hand_made()
    # Window ranks 4..5 (rank_start=3, rank_end=5): d3 (rank 4) and d4 (rank 5); the third negative is random.
    examples, report = mine_negatives(
        dataset, "train", 3, seed=0, scorer=lambda _: scores, source="dense", rank_start=3, rank_end=5,
        relative_margin=None,
    )  # fmt: skip
    (example,) = examples
    mined = [neg for neg in example.negatives if neg.source == "dense"]
    assert sorted(neg.doc_id for neg in mined) == ["d3", "d4"]
    assert [neg.source for neg in example.negatives].count("random_fill") == 1
    assert report.guards == Counter({"judged_positive": 1, "rank_window": 2, "short_window": 1})
    assert "d0" not in {neg.doc_id for neg in example.negatives}
    assert mining_summary(examples)["negatives_random_fill"] == 1


def test_dense_mining_with_the_tiny_model(tiny, tiny_model_dir, tmp_path):
    scorer = make_scorer("dense", tiny, "train", tiny_model_dir, tmp_path / "cache", max_seq_length=32)
    kwargs = dict(num_negatives=1, scorer=scorer, source="dense", rank_start=1, rank_end=10, relative_margin=0.95)
    examples, report = mine_negatives(tiny, "train", seed=5, **kwargs)
    again, _ = mine_negatives(tiny, "train", seed=5, **kwargs)
    assert examples == again
    assert_no_positive(tiny, examples)
    for example in examples:
        for neg in example.negatives:
            if neg.source == "dense":
                assert 1 < neg.rank <= 10
                positive_score = float(scorer(example.query_id)[list(tiny.corpus).index(example.positive_id)])
                if positive_score > 0:
                    assert neg.score <= 0.95 * positive_score + 1e-6
    assert report.examples == 24
    assert report.guards["rank_window"] > 0
    assert list((tmp_path / "cache").glob("*.npy"))  # corpus embeddings cached for the next miner


def test_mix_takes_each_slot_from_one_miner(tiny):
    bm25, _ = mine_negatives(tiny, "train", 2, 1, make_scorer("bm25", tiny, "train"), "bm25", 0, 12, None)
    rand, _ = mine_negatives(tiny, "train", 2, 1)
    only_first, taken = mix_examples(bm25, rand, 0.0 + 1e-9, seed=0)
    assert taken["second"] == 0 and only_first == bm25
    mixed, taken = mix_examples(bm25, rand, 0.5, seed=0)
    assert mixed == mix_examples(bm25, rand, 0.5, seed=0)[0]
    assert taken["first"] > 0 and taken["second"] > 0
    assert taken["first"] + taken["second"] == 2 * len(bm25)
    assert {neg.source for example in mixed for neg in example.negatives} == {"bm25", "random"}
    assert_no_positive(tiny, mixed)
    with pytest.raises(ValueError, match="cannot mix"):
        mix_examples(bm25, rand[:-1], 0.5, 0)
    with pytest.raises(ValueError, match="out of step"):
        mix_examples(bm25, list(reversed(rand)), 0.5, 0)
