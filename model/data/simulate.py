"""A SYNTHETIC click log: a position-biased user simulated over a BEIR dataset (SciFact by default).

No real user produced these rows. They exist so that the click-log path of the pipeline can be shown end to
end, and so that one can measure how much of the judged data's quality a click rule recovers, on data whose
true relevance is known (the qrels).

The simulated search engine ranks the corpus with BM25 and shows the top ``top_k``. The user follows the
position-based click model (PBM; Craswell et al. 2008, Joachims et al. 2017): the result at position ``k`` is
examined with probability ``(1/k)^eta``, and an examined result is clicked with probability
``click_relevant`` when the qrels judge it relevant, ``click_nonrelevant`` otherwise (a noisy user). A click on
a relevant result dwells long (log-normal around ``dwell_relevant_median`` seconds), one on a non-relevant
result briefly (around ``dwell_nonrelevant_median``), with overlap, so no dwell threshold is perfect.

Users come in sessions of one to three searches, at random times over ``days`` days; every row carries
``impression_id``, ``session_id`` and the page's ``timestamp``. A ``<log>.meta.json`` file next to the log
records that it is synthetic and the parameters that produced it.
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

import numpy as np

from denseflow.model.data.beir import Dataset, normalise_text
from denseflow.model.index.bm25 import LEGACY_BM25, BM25Index


@dataclass(frozen=True)
class ClickModel:
    """Parameters of the simulated user; the defaults are a moderately noisy, strongly position-biased one."""

    top_k: int = 10
    eta: float = 1.0
    click_relevant: float = 0.9
    click_nonrelevant: float = 0.1
    dwell_relevant_median: float = 60.0
    dwell_nonrelevant_median: float = 8.0
    dwell_sigma: float = 0.9
    impressions_per_query: float = 20.0
    max_session_queries: int = 3
    start: str = "2025-01-01T00:00:00+00:00"
    days: int = 28
    seed: int = 0

    def examination(self, position: int) -> float:
        return (1.0 / position) ** self.eta


@dataclass
class SimulationReport:
    """What was simulated, and the best any click rule could do: only shown documents can be clicked."""

    path: str
    synthetic: bool = True
    queries: int = 0
    impressions: int = 0
    rows: int = 0
    clicks: int = 0
    sessions: int = 0
    judged_pairs: int = 0
    judged_pairs_shown: int = 0
    model: dict = field(default_factory=dict)
    query_ids: list[str] = field(default_factory=list)

    @property
    def shown_share(self) -> float:
        """Share of judged (query, document) pairs the ranker ever shows: the recall ceiling of clicks."""
        return self.judged_pairs_shown / self.judged_pairs if self.judged_pairs else 0.0


def simulate_clicks(
    dataset: Dataset,
    split: str,
    out: Path,
    model: ClickModel = ClickModel(),
    max_queries: int | None = None,
    progress: bool = False,
) -> SimulationReport:
    """Write a JSONL (``.gz`` when ``out`` ends so) click log over the judged queries of ``split``."""
    rng = np.random.default_rng(model.seed)
    query_ids = list(dataset.qrels[split])
    if max_queries is not None:
        query_ids = sorted(rng.choice(query_ids, size=min(max_queries, len(query_ids)), replace=False).tolist())
    # The ranking users are simulated on is a fixed part of the synthetic data: the analyzer it was made with.
    index = BM25Index(dataset.corpus, LEGACY_BM25)
    rankings: dict[str, list[str]] = {}
    report = SimulationReport(path=str(out), queries=len(query_ids), model=asdict(model), query_ids=list(query_ids))
    for n, qid in enumerate(query_ids, start=1):
        rankings[qid] = [doc_id for doc_id, _ in index.search(dataset.queries[qid], model.top_k)]
        judged = {doc_id for doc_id, rel in dataset.qrels[split][qid].items() if rel > 0}
        report.judged_pairs += len(judged)
        report.judged_pairs_shown += len(judged & set(rankings[qid]))
        if progress and n % 100 == 0:
            print(f"ranked {n}/{len(query_ids)} queries", flush=True)

    total = max(1, round(len(query_ids) * model.impressions_per_query))
    # A session is 1..max_session_queries searches; sessions start uniformly over the window, in time order.
    sizes: list[int] = []
    while sum(sizes) < total:
        sizes.append(int(rng.integers(1, model.max_session_queries + 1)))
    sizes[-1] -= sum(sizes) - total
    window = model.days * 86_400
    starts = np.sort(rng.uniform(0, window, size=len(sizes)))
    origin = datetime.fromisoformat(model.start)
    if origin.tzinfo is None:
        origin = origin.replace(tzinfo=UTC)
    examine = np.array([model.examination(k) for k in range(1, model.top_k + 1)])
    mu_rel, mu_non = math.log(model.dwell_relevant_median), math.log(model.dwell_nonrelevant_median)

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _open_text(out) as sink:
        for session_number, (size, start) in enumerate(zip(sizes, starts, strict=True)):
            session_id = f"s{session_number:07d}"
            clock = float(start)
            for _ in range(size):
                qid = query_ids[int(rng.integers(len(query_ids)))]
                shown = rankings[qid]
                relevant = dataset.qrels[split][qid]
                examined = rng.random(len(shown)) < examine[: len(shown)]
                click_p = np.array(
                    [model.click_relevant if relevant.get(d, 0) > 0 else model.click_nonrelevant for d in shown]
                )
                clicked = examined & (rng.random(len(shown)) < click_p)
                timestamp = (origin + timedelta(seconds=clock)).isoformat()
                impression_id = f"i{report.impressions:08d}"
                report.impressions += 1
                for position, (doc_id, was_clicked) in enumerate(zip(shown, clicked, strict=True), start=1):
                    row: dict = {
                        "query": dataset.queries[qid],
                        "doc_id": doc_id,
                        "position": position,
                        "clicked": bool(was_clicked),
                        "dwell": None,
                        "timestamp": timestamp,
                        "session_id": session_id,
                        "impression_id": impression_id,
                    }
                    if was_clicked:
                        mu = mu_rel if relevant.get(doc_id, 0) > 0 else mu_non
                        row["dwell"] = round(float(rng.lognormal(mu, model.dwell_sigma)), 1)
                        clock += row["dwell"]
                        report.clicks += 1
                    sink.write(json.dumps(row, ensure_ascii=False) + "\n")
                    report.rows += 1
                clock += float(rng.uniform(5, 60))  # reading the page, typing the next query
            report.sessions += 1
    meta = asdict(report) | {
        "shown_share": report.shown_share,
        "split": split,
        "generator": "denseflow.model.data.simulate",
    }
    meta["note"] = "SYNTHETIC click log simulated by denseflow (model/simulate.py); no real user produced it."
    meta_path(out).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return report


def meta_path(log: Path) -> Path:
    return Path(log).with_name(Path(log).name + ".meta.json")


def _open_text(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "wt", encoding="utf-8", compresslevel=5)
    return path.open("w", encoding="utf-8")


def label_quality(
    click_queries: Mapping[str, str],
    click_qrels: Mapping[str, Mapping[str, int]],
    judged: Dataset,
    split: str,
    judged_query_ids: list[str] | None = None,
) -> dict[str, float]:
    """Precision and recall of click-derived positives against the judged ones, matching queries by text.

    Precision: share of click positives that the qrels judge relevant. Recall: share of judged relevant
    (query, document) pairs, over ``judged_query_ids`` (default: every query of ``split``), that clicks found.
    """
    by_text = {normalise_text(judged.queries[qid]): qid for qid in judged.qrels[split]}
    click_pairs: set[tuple[str, str]] = set()
    unmatched = 0
    for qid, docs in click_qrels.items():
        judged_qid = by_text.get(normalise_text(click_queries[qid]))
        if judged_qid is None:
            unmatched += 1
            continue
        click_pairs |= {(judged_qid, doc_id) for doc_id, rel in docs.items() if rel > 0}
    scope = judged_query_ids if judged_query_ids is not None else list(judged.qrels[split])
    judged_pairs = {(qid, d) for qid in scope for d, rel in judged.qrels[split][qid].items() if rel > 0}
    hits = len(click_pairs & judged_pairs)
    return {
        "click_positives": float(len(click_pairs)),
        "judged_positives": float(len(judged_pairs)),
        "true_positives": float(hits),
        "precision": hits / len(click_pairs) if click_pairs else 0.0,
        "recall": hits / len(judged_pairs) if judged_pairs else 0.0,
        "queries_with_click_positive": float(len({qid for qid, _ in click_pairs})),
        "unmatched_queries": float(unmatched),
    }
