"""Which search mode ships: dense alone, or fused with BM25 — chosen on dev, like every other choice."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from denseflow.model.evaluation.choice import Choice, choose_on_evidence, prior_only
from denseflow.model.evaluation.evaluate import EvaluationResult

ServedMode = Literal["dense", "hybrid"]
# BM25 + dense fusion beats either alone across BEIR (Thakur et al. 2021; Bruch et al. 2023): the prior when dev
# is too small to tell the two apart.
PRIOR_MODE: ServedMode = "hybrid"


def choose_served_mode(
    configured: str,
    dense_dev: dict[str, float] | None,
    hybrid_dev: dict[str, float] | None,
    can_choose: bool,
    alpha: float = 0.05,
    permutations: int = 10_000,
) -> Choice:
    """The configured mode, or with ``auto`` the prior (hybrid), replaced by dense only when dense beats hybrid by a
    paired test on dev's per-query nDCG@10 (``*_dev``; None without a dev split)."""
    if configured in ("dense", "hybrid"):
        return prior_only("served_mode", configured, "configured", alpha)
    if not can_choose or not dense_dev or not hybrid_dev:
        return prior_only("served_mode", PRIOR_MODE, "prior (no dev split large enough to choose on)", alpha)
    return choose_on_evidence(
        "served_mode", PRIOR_MODE, {"hybrid": hybrid_dev, "dense": dense_dev}, alpha, permutations
    )


def served_system(
    dense: EvaluationResult,
    fused: EvaluationResult,
    configured: str,
    can_choose: bool,
    alpha: float = 0.05,
    permutations: int = 10_000,
) -> tuple[EvaluationResult, ServedMode, Choice]:
    """The system that ships of a dense model and its hybrid, its mode and the choice record."""
    choice = choose_served_mode(
        configured,
        dense.dev.per_query if dense.dev else None,
        fused.dev.per_query if fused.dev else None,
        can_choose,
        alpha,
        permutations,
    )
    mode: ServedMode = "hybrid" if choice.used == "hybrid" else "dense"
    return (fused if mode == "hybrid" else dense), mode, choice


@dataclass(frozen=True)
class EvaluatedSystems:
    """What the evaluation stage of a retrain hands on: the five systems evaluated, and for the trained model and
    the base model the system that ships, its mode and the reason dev gave."""

    trained: EvaluationResult
    fused: EvaluationResult
    zero_shot: EvaluationResult
    base_fused: EvaluationResult
    bm25: EvaluationResult
    served: EvaluationResult
    mode: ServedMode
    mode_reason: str
    base_served: EvaluationResult
    base_mode: ServedMode
    base_reason: str

    @property
    def evaluations(self) -> list[EvaluationResult]:
        """Every system, in the summary's and the recall plot's order."""
        return [self.fused, self.trained, self.base_fused, self.zero_shot, self.bm25]
