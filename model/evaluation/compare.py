"""Two ranking systems side by side, before one replaces the other (``denseflow compare A B``, and the gate's record).

What search teams look at before they ship a ranker (anserini's per-topic diffs, Quepid, OpenSearch's search
relevance workbench): per-query wins and losses on judged queries with a paired test, on all of them and on the
unseen-document ones; on any queries, judged or not, how much the top 10 changes (overlap@10 and rank-biased
overlap, Webber et al. 2010) and which queries' top 3 changed most; and what each costs per query.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from denseflow.model.context import RunContext
from denseflow.model.data.beir import Document
from denseflow.model.encoder import cached_corpus_embeddings, encode, load_encoder
from denseflow.model.evaluation.evaluate import Fusion
from denseflow.model.evaluation.metrics import ranked
from denseflow.model.evaluation.stats import PairedTest, paired_test
from denseflow.model.fusion import fuse_query
from denseflow.model.index.bm25 import BM25Index
from denseflow.model.index.topk import exact_search
from denseflow.model.promotion import MIN_UNSEEN_QUERIES

Run = Mapping[str, Mapping[str, float]]


def rank_biased_overlap(a: Sequence[str], b: Sequence[str], p: float = 0.9) -> float:
    """RBO of two rankings, truncated at their shorter depth and extrapolated (Webber et al. 2010, eq. 32):
    1 for identical rankings, 0 for disjoint ones; ``p`` weighs the top (0.9: the top 10 carry ~86 %)."""
    depth = min(len(a), len(b))
    if depth == 0:
        return 1.0 if len(a) == len(b) else 0.0
    seen_a: set[str] = set()
    seen_b: set[str] = set()
    overlap, total = 0, 0.0
    for d in range(1, depth + 1):
        x, y = a[d - 1], b[d - 1]
        if x == y:
            overlap += 1
        else:
            overlap += (x in seen_b) + (y in seen_a)
        seen_a.add(x)
        seen_b.add(y)
        total += overlap / d * p**d
    return float(overlap / depth * p**depth + (1 - p) / p * total)


@dataclass(frozen=True)
class ChangedQuery:
    query_id: str
    text: str
    overlap_at_3: int
    top3_a: list[str]
    top3_b: list[str]


@dataclass(frozen=True)
class Comparison:
    """``b`` against ``a`` (positive differences: ``b`` is better)."""

    label_a: str
    label_b: str
    all_queries: PairedTest | None
    unseen: PairedTest | None
    overlap_at_10: float
    rbo: float
    compared_queries: int
    most_changed: list[ChangedQuery] = field(default_factory=list)
    latency_p50_ms: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def compare_systems(
    label_a: str,
    label_b: str,
    per_query_a: Mapping[str, float],
    per_query_b: Mapping[str, float],
    run_a: Run,
    run_b: Run,
    queries: Mapping[str, str],
    unseen: Sequence[str] = (),
    titles: Mapping[str, str] | None = None,
    latency_p50_ms: Mapping[str, float] | None = None,
    permutations: int = 10_000,
    shown: int = 10,
) -> Comparison:
    """Paired tests on the judged queries (``per_query_*``: nDCG@10), ranking changes on ``queries`` (judged or not)."""
    judged = sorted(set(per_query_a) & set(per_query_b))
    all_test = paired_test(per_query_b, per_query_a, "ndcg@10", permutations) if len(judged) >= 2 else None
    unseen_ids = [query for query in unseen if query in per_query_a and query in per_query_b]
    unseen_test = (
        paired_test(
            {q: per_query_b[q] for q in unseen_ids}, {q: per_query_a[q] for q in unseen_ids}, "ndcg@10", permutations
        )
        if len(unseen_ids) >= MIN_UNSEEN_QUERIES
        else None
    )
    overlaps, rbos, changed = [], [], []
    for query_id, text in queries.items():
        top_a, top_b = ranked(run_a.get(query_id, {}))[:10], ranked(run_b.get(query_id, {}))[:10]
        overlaps.append(len(set(top_a) & set(top_b)) / max(len(top_a), len(top_b), 1))
        rbos.append(rank_biased_overlap(top_a, top_b))
        changed.append(
            ChangedQuery(
                query_id,
                text,
                len(set(top_a[:3]) & set(top_b[:3])),
                _titled(top_a[:3], titles),
                _titled(top_b[:3], titles),
            )
        )
    changed.sort(key=lambda item: (item.overlap_at_3, item.query_id))
    return Comparison(
        label_a,
        label_b,
        all_test,
        unseen_test,
        float(np.mean(overlaps)) if overlaps else 1.0,
        float(np.mean(rbos)) if rbos else 1.0,
        len(overlaps),
        [item for item in changed if item.overlap_at_3 < 3][:shown],
        dict(latency_p50_ms or {}),
    )


def _titled(doc_ids: Sequence[str], titles: Mapping[str, str] | None) -> list[str]:
    return [(titles or {}).get(doc_id) or doc_id for doc_id in doc_ids]


class ServedRanker:
    """One system as it is served, ranking one query at a time: its query tower, its corpus embeddings (from the
    embedding cache), BM25 and the fusion. Built once per system; it ranks unjudged queries and is what the latency
    figure times."""

    def __init__(self, model_dir: str, corpus: Mapping[str, Document], context: RunContext, fusion: Fusion | None):
        self.doc_ids, self.doc_embeddings = cached_corpus_embeddings(
            model_dir, corpus, context.cache_dir, context.document_length, context.eval_batch_size,
            context.precision, progress=False,
        )  # fmt: skip
        self.model = load_encoder(model_dir, context.max_seq_length)
        self.precision = context.precision
        self.bm25 = BM25Index(corpus, context.bm25) if fusion is not None else None
        self.fusion = fusion

    def rank(self, query: str, depth: int = 100) -> dict[str, float]:
        rows, scores = exact_search(encode(self.model, [query], "query", 1, self.precision), self.doc_embeddings, depth)
        dense = {self.doc_ids[i]: float(s) for i, s in zip(rows[0], scores[0], strict=True) if i >= 0}
        if self.bm25 is None or self.fusion is None:
            return dense
        fusion = self.fusion
        return fuse_query(
            dense, dict(self.bm25.search(query, depth)), fusion.weight, fusion.method, fusion.rrf_k, fusion.depth
        )


def query_latency_ms(search_one, queries: Sequence[str], repeats: int = 30) -> float:  # noqa: ANN001 - str -> object
    """p50 milliseconds of ``search_one(query)`` over up to ``repeats`` queries, one at a time (after one warm-up)."""
    import time

    sample = list(queries)[:repeats]
    if not sample:
        return float("nan")
    search_one(sample[0])
    timings = []
    for query in sample:
        started = time.perf_counter()
        search_one(query)
        timings.append((time.perf_counter() - started) * 1000)
    return float(np.median(timings))


def _test_row(name: str, test: PairedTest | None) -> str:
    if test is None:
        return f"| {name} | too few queries to test | | | |"
    return (
        f"| {name} | {test.mean_difference:+.4f} | {test.p_value:.4f} | {test.wins} / {test.losses} / {test.ties} "
        f"| {test.queries} |"
    )


def comparison_markdown(comparison: Comparison, data: str) -> str:
    a, b = comparison.label_a, comparison.label_b
    lines = [
        f"# {b} against {a}",
        "",
        f"Data: {data}. Positive differences: {b} is better. Paired randomisation test, two-sided.",
        "",
        "| queries | Δ nDCG@10 | p | wins / losses / ties | n |",
        "|---|---|---|---|---|",
        _test_row("all judged", comparison.all_queries),
        _test_row("unseen-document", comparison.unseen),
        "",
        f"Top 10 on {comparison.compared_queries} queries: overlap@10 {comparison.overlap_at_10:.3f}, "
        f"rank-biased overlap {comparison.rbo:.3f}.",
    ]
    if comparison.latency_p50_ms:
        shown = ", ".join(f"{name} {ms:.1f} ms" for name, ms in comparison.latency_p50_ms.items())
        lines += ["", f"Query latency p50 (encode + search, one query at a time): {shown}."]
    if comparison.most_changed:
        lines += [
            "",
            "## Queries whose top 3 changed most",
            "",
            f"| query | top 3 of {a} | top 3 of {b} |",
            "|---|---|---|",
        ]
        for item in comparison.most_changed:
            lines.append(
                f"| {item.text[:80]} | {'; '.join(t[:50] for t in item.top3_a)} | {'; '.join(t[:50] for t in item.top3_b)} |"
            )
    return "\n".join(lines) + "\n"
