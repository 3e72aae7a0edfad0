"""BM25 built in numpy: bm25s's own index, score for score, and it still saves, loads and searches."""

from __future__ import annotations

from pathlib import Path

import bm25s
import numpy as np

from denseflow.model.index.bm25 import K1, STOPWORDS, B, BM25Index, tokenize

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
    index = bm25s.BM25(k1=K1, b=B, method="atire", idf_method="robertson")
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
        BM25Index.from_tokens(doc_ids, [tokenize(t) for t in TEXTS]).scores("heart"), built.scores("heart")
    )
    built.save(tmp_path)
    loaded = BM25Index.load(tmp_path, doc_ids)
    for query in QUERIES:
        assert loaded.search(query, 3) == built.search(query, 3)
