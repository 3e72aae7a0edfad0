"""Which search mode ships: dense alone, or fused with BM25 — chosen on dev, like every other choice."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from denseflow.model.evaluation.evaluate import EvaluationResult

ServedMode = Literal["dense", "hybrid"]
# BM25 + dense fusion beats either alone across BEIR (Thakur et al. 2021; Bruch et al. 2023): the prior when dev
# is too small to tell the two apart.
PRIOR_MODE: ServedMode = "hybrid"


def choose_served_mode(
    configured: str,
    dense_dev: Mapping[str, float] | None,
    hybrid_dev: Mapping[str, float] | None,
    can_choose: bool,
    metric: str = "ndcg@10",
) -> tuple[ServedMode, str]:
    """``(mode, why)``: the configured mode, or with ``auto`` hybrid only when it beats dense on dev."""
    if configured in ("dense", "hybrid"):
        return configured, "configured"  # type: ignore[return-value]
    if not can_choose or dense_dev is None or hybrid_dev is None:
        return PRIOR_MODE, "prior (no dev split large enough to choose on)"
    dense, hybrid = dense_dev[metric], hybrid_dev[metric]
    if hybrid > dense:
        return "hybrid", f"dev {metric}: hybrid {hybrid:.4f} > dense {dense:.4f}"
    return "dense", f"dev {metric}: dense {dense:.4f} >= hybrid {hybrid:.4f}"


def served_system(
    dense: EvaluationResult, fused: EvaluationResult, configured: str, can_choose: bool
) -> tuple[EvaluationResult, ServedMode, str]:
    """The system that ships of a dense model and its hybrid, its mode and why (see :func:`choose_served_mode`)."""
    mode, why = choose_served_mode(configured, dense.dev_metrics, fused.dev_metrics, can_choose)
    return (fused if mode == "hybrid" else dense), mode, why
