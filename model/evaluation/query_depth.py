"""Which query tower depth ships: every candidate depth's served figures (hybrid at the prior fusion) on dev and
test, all and unseen-document queries, and its one-query encode time; dev alone chooses, by
:func:`denseflow.model.training.shallow.choose_depth`'s rule. Test is reported, never chosen on.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from denseflow.model.config import EvalConfig
from denseflow.model.context import RunContext
from denseflow.model.data.beir import Dataset
from denseflow.model.evaluation.choice import Choice
from denseflow.model.evaluation.evaluate import Fusion, evaluate_system
from denseflow.model.evaluation.partition import UNSEEN, seen_document_split
from denseflow.model.fusion import NEUTRAL_WEIGHT
from denseflow.model.training.shallow import choose_depth

TIMING_QUERIES = 100


@dataclass(frozen=True)
class QueryDepthRow:
    """One query-tower depth's served figures (hybrid at the prior fusion) and its one-query encode time."""

    layers: int
    dev_ndcg: float | None
    test_ndcg: float
    test_unseen_ndcg: float | None
    encode_p50_ms: float | None

    def metrics(self) -> dict[str, float]:
        """The row as MLflow metrics (``query_layers.<depth>.`` prefixed by the caller); missing figures left out."""
        figures = {
            "test_served_ndcg_at_10": self.test_ndcg,
            "dev_served_ndcg_at_10": self.dev_ndcg,
            "test_unseen_served_ndcg_at_10": self.test_unseen_ndcg,
            "encode_p50_ms": self.encode_p50_ms,
        }
        return {name: value for name, value in figures.items() if value is not None}


def measure_query_depths(
    candidates: Mapping[int, str],
    dataset: Dataset,
    split: str,
    dev_split: str | None,
    train_split: str,
    settings: EvalConfig,
    context: RunContext,
) -> list[QueryDepthRow]:
    """Each candidate (depth → model folder) served as hybrid at the prior fusion: nDCG@10 on dev, on test and on
    test's unseen-document queries, and the exported tower's one-query encode p50. ``dataset`` holds ``split``,
    ``train_split`` and ``dev_split``."""
    used = [dataset.qrels[train_split]] + ([dataset.qrels[dev_split]] if dev_split else [])
    unseen = seen_document_split(dataset.qrels[split], used)[UNSEEN]
    fusion = Fusion.of(NEUTRAL_WEIGHT, settings.fusion, settings)
    timing_queries = [dataset.queries[query_id] for query_id in sorted(dataset.qrels[dev_split or split])]
    rows = []
    for layers, model_dir in sorted(candidates.items()):
        label = f"query_layers_{layers}"
        test = evaluate_system(label, model_dir, dataset, split, context, settings, fusion)
        dev = evaluate_system(label, model_dir, dataset, dev_split, context, settings, fusion) if dev_split else None
        rows.append(
            QueryDepthRow(
                layers,
                dev.metrics["ndcg@10"] if dev else None,
                test.metrics["ndcg@10"],
                _mean_of(test.per_query["ndcg@10"], unseen),
                encode_p50_ms(model_dir, timing_queries[:TIMING_QUERIES], context),
            )
        )
    return rows


def query_depth_choice(
    rows: list[QueryDepthRow],
    full_depth: int,
    tolerance: float,
    can_choose: bool,
    dev_split: str | None,
    dev_queries: int,
) -> Choice:
    """The depth that ships as a choice record: the smallest depth within ``tolerance`` of the full tower's served
    dev nDCG@10, the full tower when dev is missing or too small to tell."""
    dev_ndcg = {row.layers: row.dev_ndcg for row in rows if row.dev_ndcg is not None}
    why_not = "no dev split" if not dev_split else "too few dev queries to choose on"
    choice = choose_depth(dev_ndcg, full_depth, tolerance, can_choose and bool(dev_ndcg), why_not)
    return Choice(
        name="query_layers",
        prior=str(full_depth),
        dev_winner=str(max(dev_ndcg, key=dev_ndcg.get)) if dev_ndcg else str(full_depth),  # type: ignore[arg-type]
        used=str(choice.used),
        prior_dev=dev_ndcg.get(full_depth),
        winner_dev=dev_ndcg.get(choice.used),
        p_value=None,
        alpha=tolerance,
        queries=dev_queries,
        reason=choice.reason,
    )


def _mean_of(per_query: dict[str, float], query_ids: list[str]) -> float | None:
    values = [per_query.get(query_id, 0.0) for query_id in query_ids]
    return sum(values) / len(values) if values else None


def encode_p50_ms(model_dir: str, queries: list[str], context: RunContext) -> float | None:
    """One query's encode time on the served path: the tower exported to ONNX (as publication does), timed alone;
    None when the tower does not export."""
    # Imported here: ONNX Runtime loads only when a shallow tower is measured.
    from denseflow.model.encoder import load_encoder
    from denseflow.model.onnx_runtime import export_query_tower
    from denseflow.model.serving.query_tower import OnnxQueryTower, single_query_p50_ms

    with tempfile.TemporaryDirectory(dir=context.workspace) as scratch:
        folder = Path(scratch) / "query_tower"
        if export_query_tower(load_encoder(model_dir), folder, context.max_seq_length) is not None:
            return None
        return single_query_p50_ms(OnnxQueryTower(folder), queries)


def query_depth_table(rows: list[QueryDepthRow], used: int, reason: str) -> str:
    """The per-depth report (markdown): served nDCG@10 on dev and test, all and unseen, and encode p50."""

    def cell(value: float | None, digits: int = 4) -> str:
        return "–" if value is None else f"{value:.{digits}f}"

    lines = [
        "| query layers | dev served nDCG@10 | test served | test unseen-document | encode p50 ms (ONNX) |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        mark = " (ships)" if row.layers == used else ""
        lines.append(
            f"| {row.layers}{mark} | {cell(row.dev_ndcg)} | {cell(row.test_ndcg)} | {cell(row.test_unseen_ndcg)} "
            f"| {cell(row.encode_p50_ms, 2)} |"
        )
    return "\n".join(lines) + f"\n\nChosen on dev: {reason}. Test is reported, never chosen on.\n"
