"""The promotion decision and the production history, as plain data: no registry, no clock, no I/O.

``decide`` says whether a candidate version replaces production. Both figures must come from the same
dataset fingerprint; the caller re-evaluates production when they do not, so ``decide`` refuses to
compare numbers from different data instead of guessing.

The history is an append-only list of alias moves (by the gate, by a person through denseflow, or seen
afterwards when someone moved the alias elsewhere, e.g. in the MLflow UI). Replaying it gives the stack
of production versions that ``rollback`` walks back down.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Literal

Action = Literal["gate", "promote", "rollback", "external"]
# Metric figures in the registry carry 6 decimals; both figures are compared at that precision, and anything
# closer than this after rounding is a tie, not a win (nor a loss).
DECIMALS = 6
TOLERANCE = 1e-9


class NotComparable(ValueError):
    """The two figures were measured on different data (or different metrics)."""


class NoPreviousProduction(LookupError):
    """Rollback asked for, but the history holds no earlier production version."""


@dataclass(frozen=True)
class Scored:
    """One version's figure for the gate metric, and the dataset it was measured on."""

    version: str
    value: float
    dataset_fingerprint: str
    reevaluated: bool = False


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    metric: str
    margin: float
    candidate: Scored
    production: Scored | None

    @property
    def delta(self) -> float | None:
        if self.production is None:
            return None
        return round(self.candidate.value, DECIMALS) - round(self.production.value, DECIMALS)

    @property
    def outcome(self) -> str:
        return "promoted" if self.promote else "rejected"

    def as_tags(self) -> dict[str, str]:
        """The decision as registry tags on the candidate version (strings, 6 decimals)."""
        tags = {
            "promotion.decision": self.outcome,
            "promotion.reason": self.reason,
            "promotion.metric": self.metric,
            "promotion.margin": f"{self.margin:g}",
            "promotion.candidate_value": f"{self.candidate.value:.6f}",
            "promotion.dataset_fingerprint": self.candidate.dataset_fingerprint,
            "promotion.production_version": self.production.version if self.production else "none",
        }
        if self.production is not None:
            tags["promotion.production_value"] = f"{self.production.value:.6f}"
            tags["promotion.delta"] = f"{self.delta:+.6f}"
            tags["promotion.production_reevaluated"] = str(self.production.reevaluated).lower()
        return tags

    def as_dict(self) -> dict:
        return {
            "decision": self.outcome,
            "promote": self.promote,
            "reason": self.reason,
            "metric": self.metric,
            "margin": self.margin,
            "delta": self.delta,
            "candidate": asdict(self.candidate),
            "production_figure": asdict(self.production) if self.production else None,
        }


def decide(candidate: Scored, production: Scored | None, metric: str, margin: float) -> Decision:
    """Promote when there is no production yet, or when the candidate beats it by more than ``margin``."""
    if margin < 0 or not math.isfinite(margin):
        raise ValueError(f"margin must be a finite number >= 0, got {margin}")
    if not math.isfinite(candidate.value):
        raise ValueError(f"candidate version {candidate.version}: {metric} is {candidate.value}")

    def made(promote: bool, reason: str) -> Decision:
        return Decision(promote, reason, metric, margin, candidate, production)

    if production is None:
        return made(True, f"no production version yet; {metric} {candidate.value:.4f}")
    if production.version == candidate.version:
        return made(False, f"version {candidate.version} is already production")
    if production.dataset_fingerprint != candidate.dataset_fingerprint:
        raise NotComparable(
            f"{metric} of candidate {candidate.version} comes from dataset {candidate.dataset_fingerprint}, "
            f"production {production.version}'s from {production.dataset_fingerprint}: re-evaluate production first"
        )
    if not math.isfinite(production.value):
        return made(True, f"production version {production.version} has no usable {metric} ({production.value})")
    delta = round(candidate.value, DECIMALS) - round(production.value, DECIMALS)
    shown = f"{delta:+.4f}" if delta == 0 or abs(delta) >= 5e-5 else f"{delta:+.6f}"  # never "-0.0000"
    figures = (
        f"{metric} {candidate.value:.4f} vs production v{production.version} {production.value:.4f} "
        f"(delta {shown}, margin {margin:g})"
    )
    if delta - margin > TOLERANCE:
        return made(True, f"better: {figures}")
    if abs(delta) <= TOLERANCE:
        return made(False, f"tie: {figures}")
    if delta >= -TOLERANCE:
        return made(False, f"not better by more than the margin: {figures}")
    return made(False, f"worse: {figures}")


# ------------------------------------------------------------------------------------------ history


@dataclass(frozen=True)
class Move:
    """``production`` moved from ``previous`` to ``version`` (None = no production)."""

    version: str | None
    previous: str | None
    action: Action
    at: str
    reason: str = ""


def parse_history(text: str | None) -> list[Move]:
    if not text:
        return []
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"production history is not JSON: {err}") from err
    if not isinstance(rows, list):
        raise ValueError("production history must be a JSON list")
    return [Move(**row) for row in rows]


def dump_history(history: list[Move], max_chars: int = 5000, reason_chars: int = 160) -> str:
    """JSON of the newest moves that fit in ``max_chars`` (a registered-model tag holds 5000 in SQL stores)."""
    rows = [asdict(move) | {"reason": move.reason[:reason_chars]} for move in history]
    while rows:
        text = json.dumps(rows, separators=(",", ":"))
        if len(text) <= max_chars:
            return text
        rows = rows[1:]
    return "[]"


def current_version(history: list[Move]) -> str | None:
    return history[-1].version if history else None


def reconcile(history: list[Move], alias_version: str | None, at: str) -> list[Move]:
    """Append an ``external`` move when the alias now points elsewhere than the history last recorded."""
    last = current_version(history)
    if alias_version == last:
        return list(history)
    return [*history, Move(alias_version, last, "external", at, "alias moved outside denseflow")]


def record(history: list[Move], version: str, action: Action, at: str, reason: str) -> list[Move]:
    return [*history, Move(version, current_version(history), action, at, reason)]


def production_stack(history: list[Move]) -> list[str | None]:
    """Replay the moves: promotions push, a rollback pops back to its target."""
    stack: list[str | None] = []
    for move in history:
        if move.action == "rollback":
            if stack:
                stack.pop()
            while stack and stack[-1] is None:
                stack.pop()
            if not stack or stack[-1] != move.version:
                stack.append(move.version)
        elif not stack or stack[-1] != move.version:
            stack.append(move.version)
    return stack


def rollback_target(history: list[Move]) -> str:
    """The production version before the current one (call after ``reconcile``)."""
    stack = production_stack(history)
    if stack:
        stack.pop()
    while stack and stack[-1] is None:
        stack.pop()
    if not stack:
        raise NoPreviousProduction("no earlier production version in the recorded history")
    return stack[-1]
