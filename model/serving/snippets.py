"""A snippet of a document around the query's terms, with the spans to highlight.

The window of ``width`` characters holding the most distinct query terms (the document's start when none
occurs), cut at word boundaries. Terms are the query's words of three letters or more, minus common English
function words; matching is case-insensitive on word prefixes, so "fracture" also marks "fractures".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_WORD = re.compile(r"\w+", re.UNICODE)
STOPWORDS = frozenset(
    "the and for with that this from are was were has have had not but its into than then they their there "
    "what when which who why how does did can could would should may might will about between".split()
)
DEFAULT_WIDTH = 240
MAX_TEXT_CHARS = 20_000


@dataclass(frozen=True)
class Snippet:
    text: str
    spans: tuple[tuple[int, int], ...]  # (start, end) of each term match inside ``text``
    leading: bool  # text was cut before the window
    trailing: bool  # ... and after it

    def plain(self) -> str:
        return f"{'…' if self.leading else ''}{self.text}{'…' if self.trailing else ''}"


def query_terms(query: str) -> list[str]:
    seen: dict[str, None] = {}
    for word in _WORD.findall(query.lower()):
        if len(word) >= 3 and word not in STOPWORDS:
            seen.setdefault(word, None)
    return list(seen)


def make_snippet(text: str, query: str, width: int = DEFAULT_WIDTH) -> Snippet:
    """The best ``width``-character window of ``text`` for ``query`` and its term spans."""
    text = " ".join(text[:MAX_TEXT_CHARS].split())
    terms = query_terms(query)
    words = [(match.start(), match.end(), match.group().lower()) for match in _WORD.finditer(text)]
    hits = [(start, end, term) for start, end, word in words for term in terms if word.startswith(term)]
    start = 0
    if hits and len(text) > width:
        best = (-1, 0)
        for anchor, _, _ in hits:
            begin = max(0, anchor - width // 4)
            found = {term for s, e, term in hits if s >= begin and e <= begin + width}
            if len(found) > best[0]:
                best = (len(found), begin)
        start = best[1]
    end = min(len(text), start + width)
    if start > 0:
        space = text.find(" ", start)
        start = space + 1 if 0 <= space < end else start
    if end < len(text):
        space = text.rfind(" ", start, end)
        end = space if space > start else end
    window = text[start:end]
    spans = tuple((s - start, e - start) for s, e, _ in hits if s >= start and e <= end)
    return Snippet(window, spans, start > 0, end < len(text))
