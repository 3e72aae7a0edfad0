"""The retrain summary a person reads: one table of the systems, the choices made on dev, the gate's decision.

Pure functions: :func:`retrain_summary` gathers what the retrain flow's stages returned into a
:class:`RetrainSummary` (its ``as_dict()`` is the flow's JSON result and the model card's source), and the rest
render that dict. The same rows feed the Prefect markdown
artifact and the terminal table ``denseflow retrain`` prints (cli/render.py), so the two never disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from denseflow.model.data.ingest import IngestedData
from denseflow.model.evaluation.evaluate import EvaluationResult, FusionChoice
from denseflow.model.evaluation.partition import SEEN, UNSEEN
from denseflow.model.promotion import GateOutcome

GAIN_METRICS = ("ndcg@10", "mrr@10", "recall@1", "recall@10", "recall@100")

SYSTEM_ORDER = ("hybrid", "trained", "zero-shot+bm25", "zero-shot", "bm25")
DESCRIPTIONS = {
    "hybrid": "trained + BM25",
    "trained": "trained dense",
    "zero-shot+bm25": "base model + BM25",
    "zero-shot": "base model dense",
    "bm25": "BM25",
}
SYSTEM_HEADER = (
    "system",
    "test nDCG@10",
    "seen-doc",
    "unseen-doc",
    "R@10",
    "R@100",
    "dev nDCG@10 [95% CI]",
    "",
)


def gains(trained: EvaluationResult, zero_shot: EvaluationResult) -> dict[str, float]:
    """What training added over the untouched base model, on the evaluated split."""
    return {name: trained.metrics[name] - zero_shot.metrics[name] for name in GAIN_METRICS}


@dataclass(frozen=True)
class RetrainSummary:
    """What a retrain did, gathered from its stages' results: the version, the data and dev split, every system's
    figures, the served mode (with the hybrid's fusion when it ships), the gate's outcome and, once published,
    the publication. :meth:`as_dict` is the flow's JSON result, which the renderers below read."""

    run_id: str
    run_url: str | None
    registered_model: str
    version: str
    data: IngestedData
    selection_split: str | None
    mode: str
    mode_reason: str
    base_mode: str
    evaluations: tuple[EvaluationResult, ...]
    promotion: GateOutcome
    hybrid: FusionChoice | None = None  # the served hybrid's fusion
    published: dict | None = None  # what publication reported (flows/retrain.py:publish_version_of)
    choices: tuple[dict, ...] = ()  # every choice made on evidence (model/evaluation/choice.py), in order
    parts: dict | None = None  # BM25's settings and the documents' length

    def as_dict(self) -> dict:
        evaluations = self.evaluations
        summary = {
            "mlflow_run_id": self.run_id,
            "mlflow_run_url": self.run_url,
            "registered_model": self.registered_model,
            "version": self.version,
            "dataset_fingerprint": self.data.fingerprint,
            "dev_split": self.data.dev_split,
            "dev_method": self.data.dev_method,
            "selection_split": self.selection_split,
            "served_mode": self.mode,
            "served_mode_chosen_by": self.mode_reason,
            "base_served_mode": self.base_mode,
            "metrics": {item.label: item.metrics for item in evaluations},
            "partitions": {
                item.label: {name: part.as_dict() for name, part in item.partitions.items()} for item in evaluations
            },
            "dev_metrics": {item.label: item.dev.metrics for item in evaluations if item.dev},
            "dev_intervals": {item.label: item.dev.interval for item in evaluations if item.dev},
            "promotion": self.promotion.as_dict(),
        }
        if self.hybrid is not None:
            hybrid = self.hybrid
            summary["hybrid"] = {"weight": hybrid.weight, "method": hybrid.method, "weight_chosen_by": hybrid.chosen_by}
        if self.published is not None:
            summary["published"] = self.published
        summary["choices"] = list(self.choices)
        if self.parts is not None:
            summary["parts"] = self.parts
        return summary


def retrain_summary(
    *,
    run_id: str,
    run_url: str | None,
    registered_model: str,
    version: str,
    data: IngestedData,
    selection_split: str | None,
    served: EvaluationResult,
    mode: str,
    mode_reason: str,
    base_mode: str,
    evaluations: Sequence[EvaluationResult],
    promotion: GateOutcome,
    choices: Sequence[dict] = (),
    parts: dict | None = None,
) -> RetrainSummary:
    """The summary of a retrain from what its stages returned (``served``: the system registered)."""
    return RetrainSummary(
        run_id=run_id,
        run_url=run_url,
        registered_model=registered_model,
        version=version,
        data=data,
        selection_split=selection_split,
        mode=mode,
        mode_reason=mode_reason,
        base_mode=base_mode,
        evaluations=tuple(evaluations),
        promotion=promotion,
        hybrid=served.fusion if mode == "hybrid" else None,
        choices=tuple(choices),
        parts=parts,
    )


def partition_cell(entry: dict | None) -> str:
    """A partition's nDCG@10 with its query count, or the count alone when it is too small for a figure."""
    if not entry:
        return "–"
    if entry["metrics"] is None:
        return f"– ({entry['queries']} q)"
    return f"{entry['metrics']['ndcg@10']:.4f} ({entry['queries']} q)"


def dev_cell(summary: dict, label: str) -> str:
    metrics = summary.get("dev_metrics", {}).get(label)
    if not metrics:
        return "–"
    interval = summary.get("dev_intervals", {}).get(label)
    shown = f"{metrics['ndcg@10']:.4f}"
    return f"{shown} [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else shown


def role_of(summary: dict, label: str) -> str:
    served = "hybrid" if summary.get("served_mode") == "hybrid" else "trained"
    base = "zero-shot+bm25" if summary.get("base_served_mode") == "hybrid" else "zero-shot"
    return "candidate (served mode)" if label == served else "base system" if label == base else ""


def system_rows(summary: dict) -> list[tuple[str, ...]]:
    """One row per system: test all / seen-document / unseen-document nDCG@10, recall, dev with its interval."""
    metrics, partitions = summary["metrics"], summary.get("partitions", {})
    labels = [label for label in SYSTEM_ORDER if label in metrics] + [
        label for label in metrics if label not in SYSTEM_ORDER
    ]
    rows = []
    for label in labels:
        values, parts = metrics[label], partitions.get(label, {})
        rows.append(
            (
                DESCRIPTIONS.get(label, label),
                f"{values['ndcg@10']:.4f}",
                partition_cell(parts.get(SEEN)),
                partition_cell(parts.get(UNSEEN)),
                f"{values['recall@10']:.4f}",
                f"{values['recall@100']:.4f}",
                dev_cell(summary, label),
                role_of(summary, label),
            )
        )
    return rows


def choice_lines(summary: dict) -> list[str]:
    """Which split the choices were made on, what was chosen, and what will be served."""
    dev, chosen_on = summary.get("dev_split"), summary.get("selection_split")
    if not dev:
        lines = ["No dev split: the last checkpoint was kept and the hybrid uses the even mix."]
    elif chosen_on:
        lines = [f"Dev split `{dev}` ({summary.get('dev_method')}): checkpoint, α and fusion weight chosen on it."]
    else:
        lines = [
            f"Dev split `{dev}` ({summary.get('dev_method')}) is too small to choose on: priors used (last "
            "checkpoint, α prior, even fusion mix, hybrid served)."
        ]
    lines.append(f"Served mode: {summary.get('served_mode')} ({summary.get('served_mode_chosen_by', 'configured')}).")
    hybrid = summary.get("hybrid")
    if hybrid:
        lines.append(
            f"Hybrid: {hybrid['method']} fusion, dense weight {hybrid['weight']:.2f} ({hybrid['weight_chosen_by']})."
        )
    parts = summary.get("parts")
    if parts:
        bm25 = parts["bm25"]
        lines.append(
            f"Documents read at {parts['document_max_seq_length']} tokens ({parts['length_reason']}); BM25 "
            f"k1 {bm25['k1']:g}, b {bm25['b']:g}, {bm25['tokenizer']}."
        )
    for choice in summary.get("choices", []):
        tested = "" if choice.get("p_value") is None else f", one-sided p = {choice['p_value']:.3f}"
        lines.append(
            f"Choice {choice['key']}: {choice['used']} (prior {choice['prior']}, dev winner {choice['dev_winner']}"
            f"{tested})."
        )
    return lines


GATE_HEADER = ("role", "version", "metric", "re-evaluated here")


def gate_rows(promotion: dict) -> list[tuple[str, ...]]:
    figures = [
        ("candidate", promotion.get("candidate")),
        ("production", promotion.get("production_figure")),
        ("base model's system", promotion.get("base_figure")),
    ]
    return [
        (role, str(item["version"]), f"{item['value']:.4f}", "yes" if item.get("reevaluated") else "no")
        for role, item in figures
        if item
    ]


def outcome_lines(summary: dict) -> list[str]:
    promotion = summary["promotion"]
    lines = [f"Gate: {promotion['decision']}. {promotion['reason']}"]
    if promotion.get("production") is not None:
        lines.append(f"production → version {promotion['production']}.")
    published = summary.get("published")
    if published:
        lines.append(
            f"Published index {published['name']} {published['version']} ({published['documents']} documents), "
            f"serving {published.get('mode')} search."
        )
    return lines


def _markdown_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *["| " + " | ".join(row) + " |" for row in rows],
    ]


def summary_markdown(summary: dict, split: str) -> str:
    """The Prefect artifact: the same tables as the terminal."""
    promotion = summary["promotion"]
    lines = [
        f"# retrain: {summary['registered_model']} version {summary['version']}",
        "",
        f"MLflow run `{summary['mlflow_run_id']}`; dataset fingerprint `{summary['dataset_fingerprint']}`; "
        f"split `{split}`.",
        "",
        *_markdown_table(SYSTEM_HEADER, system_rows(summary)),
        "",
        *choice_lines(summary),
        "",
        f"## promotion gate: **{promotion['decision']}**",
        "",
    ]
    rows = gate_rows(promotion)
    if rows:
        header = (GATE_HEADER[0], GATE_HEADER[1], promotion.get("metric", "metric"), GATE_HEADER[3])
        lines += [*_markdown_table(header, rows), ""]
    lines += outcome_lines(summary)
    return "\n".join(lines)
