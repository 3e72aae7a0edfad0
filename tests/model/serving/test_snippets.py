"""Snippets around the query's terms (model/serving/snippets.py)."""

from __future__ import annotations

from denseflow.model.serving.snippets import make_snippet, query_terms

TEXT = (
    "Background text about unrelated cardiology work. " * 6
    + "Vitamin D supplementation raised bone density in older women. "
    + "Closing remarks on methods and funding. " * 6
)


def test_the_window_holds_the_query_terms_and_marks_each_match():
    snippet = make_snippet(TEXT, "vitamin D and bone density", width=120)
    assert "Vitamin D supplementation raised bone density" in snippet.text
    marked = {snippet.text[start:end].lower() for start, end in snippet.spans}
    assert {"vitamin", "bone", "density"} <= marked
    assert snippet.leading and snippet.trailing
    assert len(snippet.text) <= 120


def test_without_a_match_the_snippet_is_the_start_of_the_text():
    snippet = make_snippet(TEXT, "quantum chromodynamics", width=60)
    assert TEXT.startswith(snippet.text)
    assert snippet.spans == ()
    assert snippet.plain().endswith("…")


def test_function_words_and_short_words_are_not_terms():
    assert query_terms("What is the effect of vitamin D on the bones?") == ["effect", "vitamin", "bones"]
