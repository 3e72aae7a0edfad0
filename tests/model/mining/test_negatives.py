"""Negative mining in its three parts (candidates, false-negative filter, selection), the fill, and the mix."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from pydantic import ValidationError

from denseflow.model.config import CompareNegativesConfig, MiningConfig, RetrainConfig
from denseflow.model.data.beir import Dataset, Document, RejectLog, load_beir
from denseflow.model.encoder import EncodingSettings
from denseflow.model.mining.candidates import random_documents, ranked_candidates
from denseflow.model.mining.filters import Teacher, load_teacher
from denseflow.model.mining.negatives import (
    TrainExample,
    make_scorer,
    mine_negatives,
    mining_summary,
    mix_examples,
    read_examples,
    training_pairs,
    write_examples,
)
from denseflow.tasks.mine import resolve_teacher


@pytest.fixture()
def tiny(tiny_beir_dir) -> Dataset:
    return load_beir(tiny_beir_dir, ["train", "test"], RejectLog())


def settings(**changes) -> MiningConfig:
    return MiningConfig(**({"candidates": "random", "teacher": "none", "seed": 0} | changes))


def judged(dataset: Dataset, query_id: str, split: str = "train") -> set[str]:
    return {doc for doc, rel in dataset.qrels[split][query_id].items() if rel > 0}


def assert_no_positive(dataset: Dataset, examples: list[TrainExample]) -> None:
    for example in examples:
        negatives = [neg.doc_id for neg in example.negatives]
        assert not set(negatives) & judged(dataset, example.query_id)
        assert len(set(negatives)) == len(negatives)


# ------------------------------------------------------------------------------------------ candidates


def test_random_negatives_are_reproducible_and_never_positive(tiny):
    examples, report = mine_negatives(tiny, "train", settings(num_negatives=3, seed=7))
    assert examples == mine_negatives(tiny, "train", settings(num_negatives=3, seed=7))[0]
    assert examples != mine_negatives(tiny, "train", settings(num_negatives=3, seed=8))[0]
    assert report.examples == len(examples) == len(list(training_pairs(tiny, "train"))) == 24
    assert all(len(example.negatives) == 3 for example in examples)
    assert {neg.source for example in examples for neg in example.negatives} == {"random"}
    assert all(neg.rank is None and neg.teacher_score is None for e in examples for neg in e.negatives)
    assert not report.guards and not report.filled  # positives are excluded up front; nothing to remove or fill
    assert_no_positive(tiny, examples)


def test_random_documents_return_what_is_left_instead_of_hanging():
    rng = np.random.default_rng(0)
    assert sorted(random_documents(rng, ["a", "b", "c"], {"a"}, 5)) == ["b", "c"]
    assert random_documents(rng, ["a"], {"a"}, 2) == []
    assert random_documents(rng, [], set(), 1) == []
    assert len(set(random_documents(rng, [str(i) for i in range(1000)], set(), 50))) == 50


def test_bm25_candidates_are_ranked_and_top_selection_takes_the_best_non_positive(tiny):
    scorer = make_scorer("bm25", tiny, "train")
    examples, report = mine_negatives(tiny, "train", settings(candidates="bm25", rank_end=12), scorer)
    assert examples == mine_negatives(tiny, "train", settings(candidates="bm25", rank_end=12), scorer)[0]
    doc_ids = list(tiny.corpus)
    expected_judged = 0
    for example in examples:
        ranked = ranked_candidates(scorer(example.query_id), doc_ids, 12)
        expected_judged += sum(c.doc_id in judged(tiny, example.query_id) for c in ranked)
        best = next(c for c in ranked if c.doc_id not in judged(tiny, example.query_id))
        (negative,) = example.negatives
        assert (negative.doc_id, negative.rank, negative.score, negative.source) == (
            best.doc_id, best.rank, best.score, "bm25",
        )  # fmt: skip
    assert report.guards == Counter({"judged_positive": expected_judged})
    assert expected_judged > 0  # the tiny corpus ranks its positives in the top 12
    assert_no_positive(tiny, examples)


def test_bm25_scores_are_computed_once_per_corpus(tiny):
    first = make_scorer("bm25", tiny, "train")
    second = make_scorer("bm25", tiny, "train")
    query_id = next(iter(tiny.qrels["train"]))
    assert first(query_id) is second(query_id)  # the study's seeds share the scores
    with pytest.raises(ValueError):
        first(query_id)[0] = 1.0


def test_a_ranked_source_without_a_scorer_is_an_error(tiny):
    with pytest.raises(ValueError, match="need a scorer"):
        mine_negatives(tiny, "train", settings(candidates="bm25"))


# ------------------------------------------------------------------------------------------ filters


def hand_made() -> tuple[Dataset, np.ndarray, Teacher]:
    """One query, positive d0. The miner ranks d1..d9 in order; the teacher finds d1 and d3 almost as close as d0.

    Teacher cosines: d0 0.8; d1 0.79 and d3 0.77 (above 0.95 × 0.8 = 0.76); d2 0.7; the rest 0.5 down to 0.2.
    """
    corpus = {f"d{i}": Document(f"t{i}", f"text {i}") for i in range(10)}
    dataset = Dataset(corpus=corpus, queries={"q": "query"}, qrels={"train": {"q": {"d0": 1}}})
    miner = np.array([1.0, 0.99, 0.97, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3], dtype=np.float32)
    cosines = [0.8, 0.79, 0.7, 0.77, 0.5, 0.45, 0.4, 0.3, 0.25, 0.2]
    # Unit vectors with the wanted cosine to the query (1, 0).
    docs = np.array([[c, np.sqrt(1 - c * c)] for c in cosines], dtype=np.float32)
    teacher = Teacher({"q": 0}, np.array([[1.0, 0.0]], dtype=np.float32), {d: i for i, d in enumerate(corpus)}, docs)
    return dataset, miner, teacher


def test_teacher_filter_drops_candidates_too_close_to_the_positive_and_counts_them():
    dataset, miner, teacher = hand_made()
    mining = settings(candidates="dense", num_negatives=3, rank_end=10)
    (example,), report = mine_negatives(dataset, "train", mining, lambda _: miner, teacher)
    assert report.guards == Counter({"judged_positive": 1, "teacher_margin": 2})
    assert [neg.doc_id for neg in example.negatives] == ["d2", "d4", "d5"]  # the top survivors, in rank order
    assert [neg.rank for neg in example.negatives] == [3, 5, 6]
    assert example.negatives[0].score == pytest.approx(0.97)  # the miner's score is kept beside the teacher's
    assert [neg.teacher_score for neg in example.negatives] == pytest.approx([0.7, 0.5, 0.45], abs=1e-6)
    assert example.positive_teacher_score == pytest.approx(0.8, abs=1e-6)
    assert mining_summary([example])["teacher_ratio_mean"] == pytest.approx((0.7 + 0.5 + 0.45) / 3 / 0.8, abs=1e-5)


def test_the_miner_score_never_feeds_the_teacher_filter():
    dataset, miner, teacher = hand_made()
    # d1 and d2 score above 0.95 × the positive on the *miner*; with the teacher filter d2 survives.
    mining = settings(candidates="dense", num_negatives=1, rank_end=10)
    (example,), _ = mine_negatives(dataset, "train", mining, lambda _: miner, teacher)
    assert example.negatives[0].doc_id == "d2"


def test_absolute_ceiling_drops_what_the_margin_kept():
    dataset, miner, teacher = hand_made()
    mining = settings(candidates="dense", num_negatives=1, rank_end=10, max_similarity=0.6)
    (example,), report = mine_negatives(dataset, "train", mining, lambda _: miner, teacher)
    assert report.guards["teacher_ceiling"] == 1  # d2 (0.7): below the margin, above the ceiling
    assert example.negatives[0].doc_id == "d4"


def test_old_miner_margin_rule_is_available_for_the_control_arm():
    dataset, miner, teacher = hand_made()
    mining = settings(candidates="dense", num_negatives=1, rank_end=10, filter="miner_margin")
    (example,), report = mine_negatives(dataset, "train", mining, lambda _: miner, teacher)
    assert report.guards == Counter({"judged_positive": 1, "miner_margin": 2})  # d1, d2 above 0.95 × 1.0
    assert example.negatives[0].doc_id == "d3"  # the teacher would have dropped it; here it only scores it
    assert example.negatives[0].teacher_score == pytest.approx(0.77, abs=1e-6)


def test_teacher_none_disables_the_filter():
    dataset, miner, _ = hand_made()
    (example,), report = mine_negatives(dataset, "train", settings(candidates="dense", rank_end=10), lambda _: miner)
    assert report.guards == Counter({"judged_positive": 1})
    assert example.negatives[0].doc_id == "d1" and example.negatives[0].teacher_score is None


# ------------------------------------------------------------------------------------------ selection and fill


def test_top_takes_the_best_survivors_and_sampled_spreads_over_the_window():
    dataset, miner, _ = hand_made()
    top = settings(candidates="dense", num_negatives=2, rank_start=3, rank_end=10)
    (example,), report = mine_negatives(dataset, "train", top, lambda _: miner)
    assert [neg.rank for neg in example.negatives] == [4, 5]
    assert report.guards == Counter({"judged_positive": 1, "rank_window": 2})
    sampled_ranks = set()
    for seed in range(20):
        sampled = top.model_copy(update={"selection": "sampled", "seed": seed})
        (example,), _ = mine_negatives(dataset, "train", sampled, lambda _: miner)
        ranks = [neg.rank for neg in example.negatives]
        assert ranks == sorted(ranks) and all(3 < rank <= 10 for rank in ranks)
        sampled_ranks |= set(ranks)
    assert max(sampled_ranks) > 5  # not just the top of the window


def test_too_few_survivors_are_filled_with_counted_random_negatives():
    dataset, miner, teacher = hand_made()
    # Ranks 2..4 hold d1 (teacher: too close), d2 and d3 (too close): one survivor for three slots.
    mining = settings(candidates="dense", num_negatives=3, rank_end=4)
    (example,), report = mine_negatives(dataset, "train", mining, lambda _: miner, teacher)
    assert [neg.source for neg in example.negatives] == ["dense", "random_fill", "random_fill"]
    assert report.filled == Counter({"examples": 1, "negatives": 2})
    assert report.as_metrics()["filled_examples"] == 1
    assert "d0" not in {neg.doc_id for neg in example.negatives}
    assert all(neg.teacher_score is not None for neg in example.negatives)  # random fills are scored too
    assert mining_summary([example])["negatives_random_fill"] == 2


def test_a_corpus_too_small_to_fill_returns_short_examples_instead_of_hanging():
    corpus = {f"d{i}": Document("", f"text {i}") for i in range(3)}
    dataset = Dataset(corpus=corpus, queries={"q": "query"}, qrels={"train": {"q": {"d0": 1, "d1": 1}}})
    for mining in (settings(num_negatives=3), settings(candidates="bm25", num_negatives=3)):
        scorer = make_scorer(mining.candidates, dataset, "train")
        examples, report = mine_negatives(dataset, "train", mining, scorer)
        assert [[neg.doc_id for neg in e.negatives] for e in examples] == [["d2"], ["d2"]]  # all there is
        assert report.filled["short_examples"] == 2


def test_examples_round_trip_with_teacher_scores_and_read_old_files(tmp_path):
    dataset, miner, teacher = hand_made()
    examples, _ = mine_negatives(dataset, "train", settings(candidates="dense", rank_end=10), lambda _: miner, teacher)
    path = write_examples(examples, tmp_path / "train_examples.jsonl")
    assert read_examples(path) == examples
    old = '{"query_id": "q", "positive_id": "d0", "negatives": [{"doc_id": "d2", "rank": 3, "score": 1.0, "source": "bm25"}]}'
    path.write_text(old + "\n")
    (example,) = read_examples(path)
    assert example.negatives[0].teacher_score is None and example.positive_teacher_score is None


# ------------------------------------------------------------------------------------------ the tiny model


def test_dense_candidates_and_base_teacher_share_the_embedding_cache(tiny, tiny_model_dir, tmp_path):
    cache = tmp_path / "cache"
    encoding = EncodingSettings(cache, query_length=32, document_length=32)
    scorer = make_scorer("dense", tiny, "train", tiny_model_dir, encoding)
    teacher = load_teacher(tiny_model_dir, tiny, "train", encoding)
    assert len(list(cache.rglob("seg-*.npz"))) == 1  # the teacher read the miner's corpus embeddings
    mining = settings(candidates="dense", rank_end=10, margin=0.95)
    examples, report = mine_negatives(tiny, "train", mining, scorer, teacher)
    assert examples == mine_negatives(tiny, "train", mining, scorer, teacher)[0]
    assert_no_positive(tiny, examples)
    for example in examples:
        for neg in example.negatives:
            assert neg.teacher_score is not None
            if neg.source == "dense" and example.positive_teacher_score > 0:
                assert neg.teacher_score <= 0.95 * example.positive_teacher_score + 1e-6
    assert report.examples == 24


def test_mix_takes_each_slot_from_one_miner(tiny):
    bm25, _ = mine_negatives(
        tiny,
        "train",
        settings(candidates="bm25", num_negatives=2, seed=1, rank_end=12),
        make_scorer("bm25", tiny, "train"),
    )
    rand, _ = mine_negatives(tiny, "train", settings(num_negatives=2, seed=1))
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


# ------------------------------------------------------------------------------------------ configuration


def test_defaults_are_bm25_top_one_negative_filtered_by_the_base_model():
    mining = MiningConfig()
    assert (mining.candidates, mining.teacher, mining.margin, mining.selection, mining.num_negatives) == (
        "bm25", "base", 0.95, "top", 1,
    )  # fmt: skip
    assert mining.max_similarity is None and mining.filter == "teacher"


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        ({"margin": 0}, "mining.margin"),
        ({"margin": 1.2}, "mining.margin"),
        ({"num_negatives": 4}, "mining.num_negatives"),
        ({"selection": "sampled", "rank_start": 9, "rank_end": 10, "num_negatives": 2}, "mining.num_negatives"),
        ({"selection": "best"}, "mining.selection"),
        ({"relative_margin": 0.95}, "mining.relative_margin"),
        ({"strategy": "bm25", "candidates": "dense"}, "mining.strategy"),
    ],
)
def test_bad_mining_settings_are_errors_naming_the_setting(bad, named):
    with pytest.raises(ValidationError) as error:
        RetrainConfig.model_validate({"mining": bad})
    message = str(error.value)
    assert named in message or named.replace("mining.", "mining\n  ") in message


def test_the_old_strategy_key_still_reads():
    assert MiningConfig.model_validate({"strategy": "dense"}).candidates == "dense"


def test_a_teacher_that_cannot_be_loaded_is_a_configuration_error(tmp_path, tiny_model_dir):
    assert resolve_teacher("none", "base-folder") is None
    assert resolve_teacher("base", "base-folder") == "base-folder"
    assert resolve_teacher(str(tiny_model_dir), "base-folder") == str(tiny_model_dir)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="mining.teacher"):
        resolve_teacher(str(tmp_path / "empty"), "base-folder")
    with pytest.raises(ValueError, match="mining.teacher"):
        resolve_teacher("no-such-model@production", "base-folder", tmp_path / "ws")


def test_study_arms_set_their_candidates_and_the_control_arm_the_old_setting():
    from denseflow.model.evaluation.compare_negatives.plan import plan_study, run_config

    config = CompareNegativesConfig(seeds=[3])
    by_arm = {spec.arm: run_config(config, spec).mining for spec in plan_study(config) if spec.trained}
    assert {arm: m.candidates for arm, m in by_arm.items()} == {
        "random": "random", "bm25-hard": "bm25", "dense-hard": "dense", "dense-remined": "dense", "bm25-old": "bm25",
    }  # fmt: skip
    old = by_arm["bm25-old"]
    assert (old.filter, old.selection, old.rank_start, old.rank_end) == ("miner_margin", "sampled", 3, 50)
    assert by_arm["bm25-hard"].filter == "teacher" and by_arm["bm25-hard"].selection == "top"
    assert all(m.seed == 3 for m in by_arm.values())
