"""BM25 built in numpy: bm25s's own index, score for score, over stemmed terms; it saves, loads and searches with the
tokenizer it was built with."""

from __future__ import annotations

import json
from pathlib import Path

import bm25s
import numpy as np
import pytest

from denseflow.model.embedding_cache import content_hash
from denseflow.model.index.bm25 import (
    LEGACY_BM25,
    STOPWORD_LISTS,
    BM25FormatError,
    BM25Index,
    BM25Settings,
    count_terms,
    load_counts,
    reuse_counts,
    save_counts,
    words,
)

SETTINGS = BM25Settings()
STOPWORDS = STOPWORD_LISTS[SETTINGS.stopwords]


def tokenize(text: str) -> list[str]:
    return SETTINGS.tokenize(text)


TEXTS = [
    "The heart pumps blood; the heart rate rises with exercise.",
    "Brain imaging of the heart-brain axis in 12 patients",
    "Gene expression in the brain and the gene regulation of heart growth, gene by gene",
    "Of the and a to",  # only stopwords: a document with no terms
    "Exercise lowers blood pressure in older adults",
    "Vitamin D and exercise: a trial in 1,200 adults",
]
QUERIES = ["heart gene", "blood pressure exercise", "brain", "the of", "vitamin d trial adults 1"]


def reference() -> bm25s.BM25:
    index = bm25s.BM25(k1=SETTINGS.k1, b=SETTINGS.b, method="atire", idf_method="robertson")
    index.index([tokenize(text) for text in TEXTS], show_progress=False)
    return index


def test_scores_equal_bm25s_own_builder() -> None:
    ours, theirs = BM25Index.from_texts([f"d{i}" for i in range(len(TEXTS))], TEXTS), reference()
    assert set(ours._bm25.vocab_dict) == set(theirs.vocab_dict)
    assert not STOPWORDS & set(ours._bm25.vocab_dict)
    for query in QUERIES:
        ids = [theirs.vocab_dict[token] for token in tokenize(query) if token in theirs.vocab_dict]
        expected = theirs.get_scores(ids) if ids else np.zeros(len(TEXTS))
        np.testing.assert_allclose(ours.scores(query), expected, rtol=1e-6, atol=1e-7)
    assert ours.search("heart gene", 2)[0][0] == "d2"


def test_pre_tokenised_and_saved_index_answer_the_same(tmp_path: Path) -> None:
    doc_ids = [f"d{i}" for i in range(len(TEXTS))]
    built = BM25Index.from_texts(doc_ids, TEXTS)
    assert np.array_equal(
        BM25Index.from_tokens(doc_ids, [words(t) for t in TEXTS]).scores("heart"), built.scores("heart")
    )
    built.save(tmp_path)
    loaded = BM25Index.load(tmp_path, doc_ids)
    for query in QUERIES:
        assert loaded.search(query, 3) == built.search(query, 3)


def counted_from(texts: list[str]):  # noqa: ANN201 - the texts_of callback reuse_counts takes, recording its calls
    asked: list[list[int]] = []

    def texts_of(rows: list[int]) -> list[str]:
        asked.append(rows)
        return [texts[row] for row in rows]

    return texts_of, asked


def test_reused_term_counts_score_like_a_fresh_build_and_count_only_changed_texts(tmp_path: Path) -> None:
    save_counts(
        tmp_path / "counts.npz",
        count_terms([words(t) for t in TEXTS], SETTINGS),
        [content_hash(t) for t in TEXTS],
        SETTINGS,
    )
    # Edited (d0), deleted (d2: its "gene" and "regulation" leave the corpus), moved, and a new document.
    changed = [TEXTS[0] + " with an erratum on gene therapy", TEXTS[5], TEXTS[1], TEXTS[4], "Zinc and heart rhythm"]
    ids = ["d0", "d5", "d1", "d4", "new"]
    texts_of, asked = counted_from(changed)
    counts, counted = reuse_counts(
        [content_hash(t) for t in changed], load_counts(tmp_path / "counts.npz", SETTINGS), texts_of, SETTINGS
    )
    assert (counted, asked) == (2, [[0, 4]])  # only the edited and the new text were tokenised
    reused, fresh = BM25Index.from_counts(ids, counts), BM25Index.from_texts(ids, changed)
    assert set(reused._bm25.vocab_dict) == set(fresh._bm25.vocab_dict)  # "regulation" gone with d2
    assert "regul" not in counts.vocabulary  # nor kept in the counts the next snapshot starts from
    for query in [*QUERIES, "erratum zinc", "regulation"]:
        np.testing.assert_allclose(reused.scores(query), fresh.scores(query), rtol=1e-6)


def test_damaged_term_counts_are_ignored_and_everything_is_counted(tmp_path: Path) -> None:
    path = tmp_path / "counts.npz"
    save_counts(path, count_terms([words(t) for t in TEXTS], SETTINGS), [content_hash(t) for t in TEXTS], SETTINGS)
    assert load_counts(path, SETTINGS) is not None
    path.write_bytes(path.read_bytes()[:100])  # a truncated file
    assert load_counts(path, SETTINGS) is None
    texts_of, asked = counted_from(TEXTS)
    counts, counted = reuse_counts([content_hash(t) for t in TEXTS], load_counts(path, SETTINGS), texts_of, SETTINGS)
    assert counted == len(TEXTS) and asked == [list(range(len(TEXTS)))]
    assert not list(tmp_path.glob(".*"))  # save_counts left no temporary file behind


def test_stemming_matches_inflected_forms_and_stopwords_never_become_terms() -> None:
    index = BM25Index.from_texts(["d0", "d1", "d2"], ["Genes regulate growth", "Pumping blood", "Zinc intake"])
    assert index.search("gene regulation", 1)[0][0] == "d0"
    assert index.scores("pumped")[1] > 0
    assert index.scores("the of and").max() == 0


def test_counts_of_another_tokenizer_are_not_reused(tmp_path: Path) -> None:
    path = tmp_path / "counts.npz"
    save_counts(
        path, count_terms([words(t) for t in TEXTS], LEGACY_BM25), [content_hash(t) for t in TEXTS], LEGACY_BM25
    )
    assert load_counts(path, LEGACY_BM25) is not None
    assert load_counts(path, SETTINGS) is None


def test_an_index_published_unstemmed_keeps_serving_with_its_own_tokenizer(tmp_path: Path) -> None:
    doc_ids = ["d0", "d1"]
    BM25Index.from_texts(doc_ids, ["Genes regulate growth", "one gene"], LEGACY_BM25).save(tmp_path)
    loaded = BM25Index.load(tmp_path, doc_ids)
    assert loaded.settings == LEGACY_BM25
    assert loaded.scores("genes")[1] == 0  # unstemmed: "genes" is not "gene"


def test_an_index_searched_with_another_tokenizer_than_its_manifest_promises_is_refused(tmp_path: Path) -> None:
    BM25Index.from_texts(["d0"], ["Genes regulate growth"], LEGACY_BM25).save(tmp_path)
    with pytest.raises(BM25FormatError, match="manifest says"):
        BM25Index.load(tmp_path, ["d0"], expected=SETTINGS)


def test_an_unknown_tokenizer_is_refused_naming_it(tmp_path: Path) -> None:
    BM25Index.from_texts(["d0"], ["Genes regulate growth"]).save(tmp_path)
    meta_file = tmp_path / "denseflow.json"
    meta = json.loads(meta_file.read_text()) | {"tokenizer": "whitespace | lemmatiser"}
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(BM25FormatError, match="whitespace"):
        BM25Index.load(tmp_path, ["d0"])


def test_an_unavailable_stemmer_is_a_validation_error_naming_the_setting() -> None:
    from pydantic import ValidationError

    from denseflow.model.config import RetrainConfig

    with pytest.raises(ValidationError, match="bm25.stemmer"):
        RetrainConfig.model_validate({"bm25": {"stemmer": "klingon"}})
    assert RetrainConfig.model_validate({"bm25": {"stemmer": "none"}}).bm25.stemmer is None
