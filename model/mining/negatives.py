"""Negative mining: for each judged (query, positive) pair, documents to contrast it with.

Three separate parts, each in its own module and each counting what it did:

1. candidates (:mod:`.candidates`): random, BM25, dense (the base model, or the model being trained when a
   flow re-mines between rounds), and the click log's skip-above documents;
2. false-negative filters (:mod:`.filters`): judged positives, the top ranks, and a dense *teacher*'s
   similarity against ``margin ×`` its similarity to the positive (never the miner's own score);
3. selection (:mod:`.selection`): the top survivors, or a uniform sample of them; 1 to 3 negatives.

When too few candidates survive, the example is filled with random negatives and counted (``filled_*``).
Each negative keeps its miner rank, miner score and teacher score; each example keeps the teacher's score
of its positive, so the ratio a plot shows can be recomputed from ``train_examples.jsonl``.

Why not ``sentence_transformers.util.mine_hard_negatives``: its candidates come from the embedding model it
is given (no BM25, random or click-log candidates), and its margin and ``max_score`` filters apply to those
same scores unless a CrossEncoder rescores them, so a bi-encoder teacher separate from the miner is not
expressible; it matches positives by text rather than by judged id (a SciFact claim has several judged
abstracts); and it returns texts, without each negative's rank, teacher score or per-filter counts, which
is what this project logs to explain a result. Its ``range_min``/``range_max``, ``relative_margin`` and
``sampling_strategy="top"|"random"`` are the model for ``rank_start``/``rank_end``, ``margin`` and
``selection`` here.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from denseflow.model.config import MiningConfig
from denseflow.model.data.beir import Dataset
from denseflow.model.mining.candidates import (
    Scorer,
    dense_scorer,
    make_scorer,
    random_documents,
    ranked_candidates,
    skip_above_documents,
)
from denseflow.model.mining.filters import (
    Teacher,
    drop_judged,
    drop_top_ranks,
    miner_margin_filter,
    teacher_filter,
)
from denseflow.model.mining.selection import select

__all__ = [
    "MiningReport",
    "Negative",
    "Scorer",
    "TrainExample",
    "dense_scorer",
    "make_scorer",
    "mine_negatives",
    "mining_summary",
    "mix_examples",
    "read_examples",
    "teacher_ratios",
    "training_pairs",
    "write_examples",
]


@dataclass(frozen=True)
class Negative:
    doc_id: str
    rank: int | None  # 1-based rank in the miner's ranking; None for random and click-log negatives
    score: float | None  # the miner's score
    source: str  # "random", "bm25", "dense", "skip_above", "random_fill"
    teacher_score: float | None = None  # the teacher's similarity to the query; None without a teacher


@dataclass
class TrainExample:
    query_id: str
    positive_id: str
    negatives: list[Negative]
    positive_teacher_score: float | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_dict(cls, row: dict) -> TrainExample:
        negatives = [Negative(**neg) for neg in row["negatives"]]
        return cls(row["query_id"], row["positive_id"], negatives, row.get("positive_teacher_score"))


@dataclass(frozen=True)
class MiningResult:
    """What the mine stage hands on: ``train_examples.jsonl``, how many examples it holds, and the plot of the
    chosen negatives (none for a mix of two mined files)."""

    examples_path: str
    examples: int
    plot_path: str | None = None


@dataclass
class MiningReport:
    """What mining did: examples written, candidates each filter removed, and examples filled at random."""

    examples: int = 0
    guards: Counter = field(default_factory=Counter)  # filter name -> candidates removed
    filled: Counter = field(default_factory=Counter)  # examples / negatives filled with random documents

    def as_metrics(self) -> dict[str, int]:
        metrics = {"examples": self.examples}
        metrics |= {f"removed_{name}": count for name, count in self.guards.items()}
        metrics |= {f"filled_{name}": count for name, count in self.filled.items()}
        return metrics


def training_pairs(dataset: Dataset, split: str) -> Iterator[tuple[str, str]]:
    """Every judged-relevant (query, document) pair of ``split``, in qrels order."""
    for query_id, judged in dataset.qrels[split].items():
        for doc_id, relevance in judged.items():
            if relevance > 0:
                yield query_id, doc_id


def mine_negatives(
    dataset: Dataset,
    split: str,
    settings: MiningConfig | None = None,
    scorer: Scorer | None = None,
    teacher: Teacher | None = None,
    extra_negatives: Mapping[str, Sequence[str]] | None = None,
    extra_source: str = "skip_above",
    *,
    num_negatives: int | None = None,
    seed: int | None = None,
    max_extra: int | None = None,
) -> tuple[list[TrainExample], MiningReport]:
    """``settings.num_negatives`` negatives for every pair of ``split``, reproducible from ``settings.seed``.

    ``scorer`` ranks the candidates (``settings.candidates``: BM25 or dense; None for random, uniform over
    the corpus). ``teacher`` scores what the margin filter compares (None: no teacher filter, and no teacher
    scores recorded). ``extra_negatives`` (``{query_id: [doc_id, ...]}``, best first, e.g. click-log
    skip-above documents) come first, at most ``settings.skip_above_per_example`` per example.

    Without ``settings``, random mining with ``num_negatives``, ``seed`` and ``max_extra`` (default: every
    slot may be a skip-above document): the short form tests and benches of other stages use.
    """
    if settings is None:
        count = num_negatives or 1
        settings = MiningConfig(
            candidates="random",
            teacher="none",
            num_negatives=count,
            seed=seed or 0,
            skip_above_per_example=count if max_extra is None else max_extra,
        )
    if settings.candidates != "random" and scorer is None:
        raise ValueError(f"candidates {settings.candidates!r} need a scorer (see make_scorer)")
    rng = np.random.default_rng(settings.seed)
    doc_ids = list(dataset.corpus)
    position = {doc_id: i for i, doc_id in enumerate(doc_ids)}
    report = MiningReport()
    examples: list[TrainExample] = []
    scores_by_query: dict[str, np.ndarray] = {}
    wanted_extra = min(settings.skip_above_per_example, settings.num_negatives)
    for query_id, positive_id in training_pairs(dataset, split):
        judged = {doc_id for doc_id, rel in dataset.qrels[split][query_id].items() if rel > 0}
        extras = skip_above_documents(extra_negatives, query_id, judged, position, wanted_extra, report.guards)
        negatives = [Negative(doc_id, None, None, extra_source) for doc_id in extras]
        taken = judged | set(extras)
        wanted = settings.num_negatives - len(negatives)
        if scorer is None:
            negatives += [Negative(d, None, None, "random") for d in random_documents(rng, doc_ids, taken, wanted)]
        elif wanted > 0:
            if query_id not in scores_by_query:
                scores_by_query[query_id] = scorer(query_id)
            scores = scores_by_query[query_id]
            survivors = _survivors(
                settings, scores, doc_ids, judged, set(extras), scores[position[positive_id]], query_id, positive_id,
                teacher, report,
            )  # fmt: skip
            chosen = select(survivors, wanted, settings.selection, rng)
            negatives += [Negative(c.doc_id, c.rank, c.score, settings.candidates, t) for c, t in chosen]
        missing = settings.num_negatives - len(negatives)
        if missing > 0:  # too few survivors: fill at random, and say so
            fill = random_documents(rng, doc_ids, taken | {n.doc_id for n in negatives}, missing)
            negatives += [Negative(doc_id, None, None, "random_fill") for doc_id in fill]
            if scorer is not None:
                report.filled["examples"] += 1
                report.filled["negatives"] += len(fill)
            if len(fill) < missing:
                report.filled["short_examples"] += 1  # the corpus itself ran out of documents
        examples.append(_with_teacher_scores(TrainExample(query_id, positive_id, negatives), teacher))
    report.examples = len(examples)
    return examples, report


def _survivors(
    settings: MiningConfig,
    scores: np.ndarray,
    doc_ids: list[str],
    judged: set[str],
    taken: set[str],
    positive_score: float,
    query_id: str,
    positive_id: str,
    teacher: Teacher | None,
    report: MiningReport,
) -> list[tuple]:
    """``(candidate, teacher score or None)`` of the ranked candidates that pass every filter, best first."""
    candidates = drop_judged(ranked_candidates(scores, doc_ids, settings.rank_end), judged, report.guards)
    candidates = [c for c in candidates if c.doc_id not in taken]
    candidates = drop_top_ranks(candidates, settings.rank_start, report.guards)
    if settings.filter == "miner_margin":
        return [(c, None) for c in miner_margin_filter(candidates, positive_score, settings.margin, report.guards)]
    if teacher is None:
        return [(c, None) for c in candidates]
    teacher_scores = teacher.scores(query_id, [c.doc_id for c in candidates]) if candidates else []
    positive = teacher.score(query_id, positive_id)
    return teacher_filter(candidates, teacher_scores, positive, settings.margin, settings.max_similarity, report.guards)


def _with_teacher_scores(example: TrainExample, teacher: Teacher | None) -> TrainExample:
    """Every negative and the positive scored by the teacher (kept where a filter already scored it)."""
    if teacher is None:
        return example
    missing = [n.doc_id for n in example.negatives if n.teacher_score is None]
    scores = dict(zip(missing, teacher.scores(example.query_id, missing), strict=True)) if missing else {}
    negatives = [
        neg
        if neg.teacher_score is not None
        else Negative(**(asdict(neg) | {"teacher_score": float(scores[neg.doc_id])}))
        for neg in example.negatives
    ]
    positive = teacher.score(example.query_id, example.positive_id)
    return TrainExample(example.query_id, example.positive_id, negatives, positive)


def mining_summary(examples: list[TrainExample]) -> Mapping[str, float]:
    """How many negatives came from each source; mean and median miner rank; teacher scores and ratios.

    ``teacher_ratio``: a negative's teacher score over its positive's, for positives the teacher scores above
    zero. Near 1 means the teacher finds the negative almost as close as the positive: hard, or unjudged.
    """
    negatives = [neg for example in examples for neg in example.negatives]
    summary: dict[str, float] = {f"negatives_{src}": n for src, n in Counter(n.source for n in negatives).items()}
    ranks = [neg.rank for neg in negatives if neg.rank is not None]
    if ranks:
        summary["negative_rank_mean"] = float(np.mean(ranks))
        summary["negative_rank_median"] = float(np.median(ranks))
        summary["negative_score_mean"] = float(np.mean([n.score for n in negatives if n.score is not None]))
    ratios = teacher_ratios(examples)
    if ratios:
        summary["teacher_ratio_mean"] = float(np.mean(ratios))
        summary["teacher_ratio_median"] = float(np.median(ratios))
        positives = [e.positive_teacher_score for e in examples if e.positive_teacher_score is not None]
        summary["teacher_positive_mean"] = float(np.mean(positives))
    return summary


def teacher_ratios(examples: Sequence[TrainExample]) -> list[float]:
    """Teacher score of each negative over its positive's (positives the teacher scores above zero)."""
    return [
        neg.teacher_score / example.positive_teacher_score
        for example in examples
        if example.positive_teacher_score is not None and example.positive_teacher_score > 0
        for neg in example.negatives
        if neg.teacher_score is not None
    ]


def write_examples(examples: list[TrainExample], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for example in examples:
            out.write(example.to_json() + "\n")
    return path


def read_examples(path: Path) -> list[TrainExample]:
    with path.open(encoding="utf-8") as lines:
        return [TrainExample.from_dict(json.loads(line)) for line in lines if line.strip()]


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
