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


def term_matches(text: str, terms: list[str]) -> list[tuple[int, int, str]]:
    """``(start, end, term)`` of every word of ``text`` that starts with a term (str.find: C speed, no regex)."""
    lowered = text.lower()
    matches = []
    for term in terms:
        position = lowered.find(term)
        while position >= 0:
            if position == 0 or not lowered[position - 1].isalnum():
                end = position + len(term)
                while end < len(lowered) and lowered[end].isalnum():
                    end += 1
                matches.append((position, end, term))
            position = lowered.find(term, position + len(term))
    return matches


def make_snippet(text: str, query: str, width: int = DEFAULT_WIDTH) -> Snippet:
    """The best ``width``-character window of ``text`` for ``query`` and its term spans.

    ``str.find`` finds the term matches and one sliding window over them counts distinct terms, so a hit's
    snippet costs tens of microseconds (search answers ten per query).
    """
    text = " ".join(text[:MAX_TEXT_CHARS].split())
    terms = query_terms(query)
    hits = sorted(term_matches(text, terms))
    start = 0
    if hits and len(text) > width:
        best_count, best_start = -1, 0
        counts: dict[str, int] = {}
        left = right = 0
        for anchor, _, _ in hits:
            begin = max(0, anchor - width // 4)
            while right < len(hits) and hits[right][1] <= begin + width:
                counts[hits[right][2]] = counts.get(hits[right][2], 0) + 1
                right += 1
            while left < right and hits[left][0] < begin:
                counts[hits[left][2]] -= 1
                left += 1
            distinct = sum(1 for count in counts.values() if count > 0)
            if distinct > best_count:
                best_count, best_start = distinct, begin
        start = best_start
    end = min(len(text), start + width)
    if start > 0:
        space = text.find(" ", start)
        start = space + 1 if 0 <= space < end else start
    if end < len(text):
        space = text.rfind(" ", start, end)
        end = space if space > start else end
    window = text[start:end]
    spans = tuple((s_ - start, e - start) for s_, e, _ in hits if s_ >= start and e <= end)
    return Snippet(window, spans, start > 0, end < len(text))
