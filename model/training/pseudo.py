"""Pseudo-queries from the corpus itself, so training sees every document and not only the judged few.

Fine-tuning on judged pairs alone moves the judged documents (a tenth of SciFact's corpus) toward query space and
leaves the rest where the base model put them; the trained positives then outrank unseen documents for unseen
queries. Self-supervised pairs over the whole corpus spread the update (Lee et al. 2019, "Latent Retrieval for
Weakly Supervised Open Domain QA", the inverse cloze task; Izacard et al. 2022, Contriever):

- ``title``: the document's title as the query, its text without the title as the positive;
- ``ict``: one sentence as the query, the document without that sentence as the positive.

Documents are drawn by a stable hash (the same ones for the same corpus), each pair's negative is another drawn
document, and the count is ``ratio`` × the judged pairs.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from denseflow.model.data.beir import Document

PseudoKind = Literal["none", "title", "ict"]
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
MIN_QUERY_CHARS = 12


@dataclass(frozen=True)
class PseudoPair:
    query: str
    positive: str
    negative: str


def _rank(doc_id: str, seed: int) -> str:
    return hashlib.sha256(f"pseudo:{seed}:{doc_id}".encode()).hexdigest()


def _pair_texts(document: Document, kind: PseudoKind, doc_id: str, seed: int) -> tuple[str, str] | None:
    if kind == "title":
        title, text = document.title.strip(), document.text.strip()
        return (title, text) if len(title) >= MIN_QUERY_CHARS and text else None
    sentences = [part for part in _SENTENCE.split(document.text.strip()) if part]
    if len(sentences) < 2:
        return None
    chosen = int(_rank(doc_id, seed + 1), 16) % len(sentences)
    query = sentences[chosen]
    rest = " ".join(sentences[:chosen] + sentences[chosen + 1 :])
    if len(query) < MIN_QUERY_CHARS:
        return None
    positive = f"{document.title} {rest}".strip()
    return query, positive


def draw_order(corpus: Mapping[str, Document], seed: int = 42) -> list[str]:
    """The corpus's document ids in a stable seeded order: the same draw for the same corpus and seed."""
    return sorted(corpus, key=lambda doc_id: _rank(doc_id, seed))


def pseudo_pairs(corpus: Mapping[str, Document], kind: PseudoKind, count: int, seed: int = 42) -> list[PseudoPair]:
    """Up to ``count`` pairs of ``kind`` from ``corpus`` (fewer when too few documents qualify)."""
    if kind == "none" or count <= 0:
        return []
    order = draw_order(corpus, seed)
    usable = [(doc_id, texts) for doc_id in order if (texts := _pair_texts(corpus[doc_id], kind, doc_id, seed))]
    if len(usable) < 2:
        return []
    chosen = usable[:count]
    pairs = []
    for position, (_, (query, positive)) in enumerate(chosen):
        negative_id = usable[(position + len(chosen)) % len(usable)][0]
        if negative_id == chosen[position][0]:
            negative_id = usable[(position + 1) % len(usable)][0]
        pairs.append(PseudoPair(query, positive, corpus[negative_id].full_text))
    return pairs
