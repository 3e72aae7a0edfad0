"""Negative mining: for each judged (query, positive) pair, pick documents to contrast it with.

One interface for every strategy: a *scorer* gives a score to every corpus document for a query (BM25,
or the inner product of dense embeddings); ``random`` has no scorer. Scored candidates pass three
false-negative guards, and each guard counts what it removed:

- ``judged_positive``: a document judged relevant to the query is never a negative;
- ``rank_window``: only ranks ``rank_start < rank <= rank_end`` are eligible (the very top ranks of a good
  ranker are often relevant documents nobody judged);
- ``relative_margin``: a candidate scoring above ``margin × score(positive)`` is dropped, for the same reason.

Why not ``sentence_transformers.util.mine_hard_negatives``: it needs an embedding model (no BM25), it
matches positives by text rather than by judged id, and it reports neither each negative's rank nor how
many candidates each guard removed, which is what this project logs to explain its results.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from denseflow.model.data.beir import Dataset

Scorer = Callable[[str], np.ndarray]
"""``scorer(query_id)`` → the score of every corpus document, in corpus order."""


@dataclass(frozen=True)
class Negative:
    doc_id: str
    rank: int | None  # 1-based rank in the miner's ranking; None for random negatives
    score: float | None
    source: str  # "random", "bm25", "dense", "skip_above", "random_fill"


@dataclass
class TrainExample:
    query_id: str
    positive_id: str
    negatives: list[Negative]

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_dict(cls, row: dict) -> TrainExample:
        return cls(row["query_id"], row["positive_id"], [Negative(**neg) for neg in row["negatives"]])


@dataclass
class MiningReport:
    """What mining did: examples written and candidates each guard removed."""

    examples: int = 0
    guards: Counter = field(default_factory=Counter)

    def as_metrics(self) -> dict[str, int]:
        return {"examples": self.examples, **{f"removed_{name}": count for name, count in self.guards.items()}}


def training_pairs(dataset: Dataset, split: str) -> Iterator[tuple[str, str]]:
    """Every judged-relevant (query, document) pair of ``split``, in qrels order."""
    for query_id, judged in dataset.qrels[split].items():
        for doc_id, relevance in judged.items():
            if relevance > 0:
                yield query_id, doc_id


def mine_negatives(
    dataset: Dataset,
    split: str,
    num_negatives: int,
    seed: int,
    scorer: Scorer | None = None,
    source: str = "random",
    rank_start: int = 0,
    rank_end: int = 50,
    relative_margin: float | None = None,
    extra_negatives: Mapping[str, Sequence[str]] | None = None,
    extra_source: str = "skip_above",
    max_extra: int | None = None,
) -> tuple[list[TrainExample], MiningReport]:
    """Examples for every pair of ``split``: ``num_negatives`` negatives each, reproducible from ``seed``.

    With no ``scorer`` negatives are uniform over the corpus (never a judged positive). With a scorer they
    are drawn uniformly from the guarded rank window; when the window holds too few, the rest are random
    and marked ``random_fill`` (counted as ``short_window``).

    ``extra_negatives`` (``{query_id: [doc_id, ...]}``, best first; e.g. click-log skip-above documents) come
    first, at most ``max_extra`` (default ``num_negatives``) per example, marked ``extra_source``; mining fills
    the rest. They pass the ``judged_positive`` guard too, and a document outside the corpus is counted as
    ``extra_unknown`` and skipped.
    """
    rng = np.random.default_rng(seed)
    doc_ids = list(dataset.corpus)
    position = {doc_id: i for i, doc_id in enumerate(doc_ids)}
    report = MiningReport()
    examples: list[TrainExample] = []
    scores_by_query: dict[str, np.ndarray] = {}
    for query_id, positive_id in training_pairs(dataset, split):
        judged = {doc_id for doc_id, rel in dataset.qrels[split][query_id].items() if rel > 0}
        extras = _extra_negatives(
            extra_negatives, query_id, judged, position, max_extra, num_negatives, extra_source, report
        )
        wanted = num_negatives - len(extras)
        judged_or_taken = judged | {neg.doc_id for neg in extras}
        if wanted == 0:
            negatives = []
        elif scorer is None:
            negatives = _random_negatives(rng, doc_ids, judged_or_taken, wanted, "random")
        else:
            if query_id not in scores_by_query:
                scores_by_query[query_id] = scorer(query_id)
            scores = scores_by_query[query_id]
            eligible = _guarded_candidates(
                scores, doc_ids, judged, scores[position[positive_id]], rank_start, rank_end, relative_margin, report
            )
            if extras:
                eligible = [candidate for candidate in eligible if candidate[0] not in judged_or_taken]
            picked = sorted(rng.choice(len(eligible), size=min(wanted, len(eligible)), replace=False))
            negatives = [Negative(eligible[i][0], eligible[i][1], eligible[i][2], source) for i in picked]
            if len(negatives) < wanted:
                report.guards["short_window"] += 1
                taken = judged_or_taken | {neg.doc_id for neg in negatives}
                negatives += _random_negatives(rng, doc_ids, taken, wanted - len(negatives), "random_fill")
        examples.append(TrainExample(query_id, positive_id, extras + negatives))
    report.examples = len(examples)
    return examples, report


def _extra_negatives(
    extra_negatives: Mapping[str, Sequence[str]] | None,
    query_id: str,
    judged: set[str],
    position: Mapping[str, int],
    max_extra: int | None,
    num_negatives: int,
    source: str,
    report: MiningReport,
) -> list[Negative]:
    if not extra_negatives or query_id not in extra_negatives:
        return []
    limit = num_negatives if max_extra is None else min(max_extra, num_negatives)
    picked: list[Negative] = []
    for doc_id in extra_negatives[query_id]:
        if len(picked) == limit:
            break
        if doc_id in judged:
            report.guards["judged_positive"] += 1
        elif doc_id not in position:
            report.guards["extra_unknown"] += 1
        elif all(neg.doc_id != doc_id for neg in picked):
            picked.append(Negative(doc_id, None, None, source))
    return picked


def _random_negatives(
    rng: np.random.Generator, doc_ids: list[str], excluded: set[str], count: int, source: str
) -> list[Negative]:
    picked: list[Negative] = []
    while len(picked) < count:
        doc_id = doc_ids[int(rng.integers(len(doc_ids)))]
        if doc_id not in excluded:
            excluded = excluded | {doc_id}
            picked.append(Negative(doc_id, None, None, source))
    return picked


def _guarded_candidates(
    scores: np.ndarray,
    doc_ids: list[str],
    judged: set[str],
    positive_score: float,
    rank_start: int,
    rank_end: int,
    relative_margin: float | None,
    report: MiningReport,
) -> list[tuple[str, int, float]]:
    """``(doc_id, rank, score)`` of the candidates in the rank window that pass every guard."""
    depth = min(rank_end, len(scores))
    top = np.argpartition(-scores, depth - 1)[:depth]
    top = top[np.lexsort((top, -scores[top]))]
    # The margin only means something when the positive itself scores above zero.
    ceiling = relative_margin * positive_score if relative_margin is not None and positive_score > 0 else None
    eligible = []
    for rank, index in enumerate(top, start=1):
        doc_id, score = doc_ids[index], float(scores[index])
        if doc_id in judged:
            report.guards["judged_positive"] += 1
        elif rank <= rank_start:
            report.guards["rank_window"] += 1
        elif ceiling is not None and score > ceiling:
            report.guards["relative_margin"] += 1
        else:
            eligible.append((doc_id, rank, score))
    return eligible


def dense_scorer(query_ids: list[str], query_embeddings: np.ndarray, doc_embeddings: np.ndarray) -> Scorer:
    """Inner-product scorer over L2-normalised embeddings (cosine similarity)."""
    row = {query_id: i for i, query_id in enumerate(query_ids)}
    return lambda query_id: doc_embeddings @ query_embeddings[row[query_id]]


def write_examples(examples: list[TrainExample], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for example in examples:
            out.write(example.to_json() + "\n")
    return path


def read_examples(path: Path) -> list[TrainExample]:
    with path.open(encoding="utf-8") as lines:
        return [TrainExample.from_dict(json.loads(line)) for line in lines if line.strip()]


def mining_summary(examples: list[TrainExample]) -> Mapping[str, float]:
    """Mean rank and score of mined negatives, and how many came from each source."""
    negatives = [neg for example in examples for neg in example.negatives]
    ranks = [neg.rank for neg in negatives if neg.rank is not None]
    scores = [neg.score for neg in negatives if neg.score is not None]
    summary: dict[str, float] = {f"negatives_{src}": n for src, n in Counter(n.source for n in negatives).items()}
    if ranks:
        summary["negative_rank_mean"] = float(np.mean(ranks))
        summary["negative_score_mean"] = float(np.mean(scores))
    return summary


def make_scorer(
    strategy: str,
    dataset: Dataset,
    split: str,
    model_dir: str | Path | None = None,
    cache_dir: Path | None = None,
    max_seq_length: int | None = None,
) -> Scorer | None:
    """The scorer of a strategy: None for ``random``, BM25 over title + text, or a dense model's cosine."""
    if strategy == "random":
        return None
    if strategy == "bm25":
        return _bm25_scorer(dataset)
    if strategy == "dense":
        from denseflow.model.encoder import cached_corpus_embeddings, encode, load_encoder

        if model_dir is None or cache_dir is None:
            raise ValueError("dense mining needs a model folder and a cache folder")
        _, doc_embeddings = cached_corpus_embeddings(model_dir, dataset.corpus, cache_dir, max_seq_length)
        query_ids = list(dataset.qrels[split])
        model = load_encoder(model_dir, max_seq_length)
        query_embeddings = encode(model, [dataset.queries[q] for q in query_ids], "query")
        return dense_scorer(query_ids, query_embeddings, doc_embeddings)
    raise ValueError(f"unknown mining strategy {strategy!r}")


# One corpus at a time: a study mines BM25 negatives once per seed (and per round of mix-hard), and the
# scores do not depend on the seed. SciFact's 809 train queries × 5,183 documents keep ~17 MB here.
_BM25_CACHE: dict[str, tuple[object, dict[str, np.ndarray]]] = {}


def _bm25_scorer(dataset: Dataset) -> Scorer:
    """BM25 over title + text; the index and each query's scores are kept for the process's next call."""
    from denseflow.model.data.beir import corpus_fingerprint
    from denseflow.model.index.bm25 import BM25Index

    key = corpus_fingerprint(dict(dataset.corpus))
    if key not in _BM25_CACHE:
        _BM25_CACHE.clear()
        _BM25_CACHE[key] = (BM25Index(dataset.corpus), {})
    index, memo = _BM25_CACHE[key]

    def scorer(query_id: str) -> np.ndarray:
        text = dataset.queries[query_id]
        if text not in memo:
            scores = index.scores(text)  # type: ignore[attr-defined]
            scores.setflags(write=False)  # shared between calls: nobody may edit it in place
            memo[text] = scores
        return memo[text]

    return scorer


def mix_examples(
    first: list[TrainExample], second: list[TrainExample], second_share: float, seed: int
) -> tuple[list[TrainExample], Counter]:
    """Per example and negative slot, ``second``'s negative with probability ``second_share``, else ``first``'s.

    Both lists must come from :func:`mine_negatives` over the same split (same pairs, same order), so each
    slot holds a guarded negative of one miner; a document both miners picked is taken once, and the slot
    falls back to the other miner's pick (then to any other negative of either). Returns the examples and how
    many negatives came from each list.
    """
    if len(first) != len(second):
        raise ValueError(f"cannot mix {len(first)} examples with {len(second)}: mine the same split")
    rng = np.random.default_rng(seed)
    taken_from: Counter = Counter()
    mixed: list[TrainExample] = []
    for a, b in zip(first, second, strict=True):
        if (a.query_id, a.positive_id) != (b.query_id, b.positive_id):
            raise ValueError(f"examples out of step: {(a.query_id, a.positive_id)} vs {(b.query_id, b.positive_id)}")
        slots = min(len(a.negatives), len(b.negatives))
        negatives: list[Negative] = []
        for slot in range(slots):
            pick_second = bool(rng.random() < second_share)
            order = [(b, "second"), (a, "first")] if pick_second else [(a, "first"), (b, "second")]
            for example, name in order:
                candidate = example.negatives[slot]
                if all(candidate.doc_id != neg.doc_id for neg in negatives):
                    negatives.append(candidate)
                    taken_from[name] += 1
                    break
            else:  # both miners picked documents already taken: any other negative of theirs keeps the count
                spare = [(n, name) for ex, name in ((a, "first"), (b, "second")) for n in ex.negatives]
                fill = next(((n, name) for n, name in spare if all(n.doc_id != x.doc_id for x in negatives)), None)
                if fill is not None:
                    negatives.append(fill[0])
                    taken_from[fill[1]] += 1
        mixed.append(TrainExample(a.query_id, a.positive_id, negatives))
    return mixed, taken_from
