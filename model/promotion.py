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
GateDecision = Literal["promoted", "rejected", "base model shipped", "conflict", "skipped"]
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


MIN_UNSEEN_QUERIES = 20


@dataclass(frozen=True)
class Evidence:
    """Paired tests of a system against another on the eval split's queries: is it better on all of them
    (one-sided), and is it worse on the unseen-document ones (one-sided; only with enough of them)."""

    p_better: float
    queries: int
    p_worse_unseen: float | None = None
    unseen_queries: int = 0

    def fails(self, alpha: float) -> str | None:
        """Why this evidence does not support a promotion at ``alpha``, or None when it does."""
        if self.p_better >= alpha:
            return (
                f"paired test not passed (one-sided p = {self.p_better:.3f} >= {alpha:g} over {self.queries} queries)"
            )
        if self.p_worse_unseen is not None and self.p_worse_unseen < alpha:
            return (
                f"significantly worse on the {self.unseen_queries} unseen-document queries "
                f"(one-sided p = {self.p_worse_unseen:.3f})"
            )
        return None


def paired_evidence(
    candidate: dict[str, float],
    other: dict[str, float],
    unseen: list[str] | tuple[str, ...] = (),
    permutations: int = 10_000,
) -> Evidence:
    """:class:`Evidence` from per-query figures (nDCG@10) of two systems on the same queries."""
    from denseflow.model.evaluation.stats import paired_test

    if len(set(candidate) & set(other)) < 2:
        return Evidence(1.0, 0)  # nothing to test on: no evidence of a gain
    better = paired_test(candidate, other, "ndcg@10", permutations, alternative="greater")
    unseen = [query for query in unseen if query in candidate and query in other]
    if len(unseen) < MIN_UNSEEN_QUERIES:
        return Evidence(better.p_value, better.queries)
    worse = paired_test(
        {q: candidate[q] for q in unseen}, {q: other[q] for q in unseen}, "ndcg@10", permutations, alternative="less"
    )
    return Evidence(better.p_value, better.queries, worse.p_value, len(unseen))


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    metric: str
    margin: float
    candidate: Scored
    production: Scored | None
    base: Scored | None = None
    ship_base: bool = False  # the candidate lost, and the base model's system beats production: ship the base

    @property
    def base_delta(self) -> float | None:
        if self.base is None:
            return None
        return round(self.candidate.value, DECIMALS) - round(self.base.value, DECIMALS)

    @property
    def delta(self) -> float | None:
        if self.production is None:
            return None
        return round(self.candidate.value, DECIMALS) - round(self.production.value, DECIMALS)

    @property
    def outcome(self) -> Literal["promoted", "base model shipped", "rejected"]:
        return "promoted" if self.promote else "base model shipped" if self.ship_base else "rejected"

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
        if self.base is not None:
            tags["promotion.base_value"] = f"{self.base.value:.6f}"
            tags["promotion.base_delta"] = f"{self.base_delta:+.6f}"
        return tags


@dataclass(frozen=True)
class GateOutcome:
    """What a gate did: its one decision, the figures it compared, and where ``production`` points afterwards.

    ``decision`` is the :attr:`Decision.outcome` (``promoted``, ``rejected``, ``base model shipped``), or
    ``conflict`` when production moved under the gate, or ``skipped`` when no gate ran; whether it promoted and
    whether the base model ships are read from it. ``base_version`` is set once the base model was registered and
    shipped.
    """

    decision: GateDecision
    reason: str
    metric: str | None = None
    margin: float | None = None
    delta: float | None = None
    candidate: Scored | None = None
    production_figure: Scored | None = None
    base_figure: Scored | None = None
    base_delta: float | None = None
    version: str | None = None
    production: str | None = None
    previous_production: str | None = None
    at: str | None = None
    base_version: str | None = None

    @property
    def promote(self) -> bool:
        return self.decision == "promoted"

    @property
    def ship_base(self) -> bool:
        return self.decision == "base model shipped"

    @classmethod
    def skipped(cls, reason: str) -> GateOutcome:
        return cls("skipped", reason)

    @classmethod
    def of(
        cls, decision: Decision, version: str, production: str | None, previous_production: str | None, at: str
    ) -> GateOutcome:
        return cls(
            decision=decision.outcome,
            reason=decision.reason,
            metric=decision.metric,
            margin=decision.margin,
            delta=decision.delta,
            candidate=decision.candidate,
            production_figure=decision.production,
            base_figure=decision.base,
            base_delta=decision.base_delta,
            version=version,
            production=production,
            previous_production=previous_production,
            at=at,
        )

    def as_dict(self) -> dict:
        """The outcome as JSON-ready data (``promotion.json``, the retrain summary): a skipped gate says only
        that and why; ``base_version`` appears once the base model shipped (or conflicted)."""
        if self.decision == "skipped":
            return {"decision": self.decision, "promote": self.promote, "reason": self.reason}
        data = asdict(self) | {"promote": self.promote, "ship_base": self.ship_base}
        if self.base_version is None:
            del data["base_version"]
        return data


@dataclass(frozen=True)
class PublishTarget:
    """The version a retrain publishes after its gate; ``repair``: production's own index is missing (a crash between
    the gate's move and the publication, or a publication that failed), so production is published again."""

    version: str
    repair: bool = False


def publish_target(promotion: GateOutcome, published_label: str | None, registered_model: str) -> PublishTarget | None:
    """What to publish now: the version the gate promoted, the base model it shipped, else production when the
    published index (``published_label``, ``name@version``) serves something else; None when nothing is due.

    The repair case means a run never waits for another promotion to give production its index back.
    """
    if promotion.promote:
        return PublishTarget(str(promotion.version))
    production = promotion.production
    if production is None:
        return None
    if str(production) == str(promotion.base_version):
        return PublishTarget(str(production))  # the base model's system won the gate
    if published_label == f"{registered_model}@{production}":
        return None
    return PublishTarget(str(production), repair=True)


def _shown(delta: float) -> str:
    return f"{delta:+.4f}" if delta == 0 or abs(delta) >= 5e-5 else f"{delta:+.6f}"  # never "-0.0000"


def _versus(candidate: Scored, other: Scored, name: str, metric: str, margin: float) -> tuple[float, str]:
    delta = round(candidate.value, DECIMALS) - round(other.value, DECIMALS)
    return delta, (
        f"{metric} {candidate.value:.4f} vs {name} {other.value:.4f} (delta {_shown(delta)}, margin {margin:g})"
    )


def _verdict(delta: float, margin: float) -> str:
    if delta - margin > TOLERANCE:
        return "better"
    if abs(delta) <= TOLERANCE:
        return "tie"
    if delta >= -TOLERANCE:
        return "not better by more than the margin"
    return "worse"


def decide(
    candidate: Scored,
    production: Scored | None,
    metric: str,
    margin: float,
    base: Scored | None = None,
    evidence: dict[str, Evidence] | None = None,
    alpha: float = 0.05,
) -> Decision:
    """Promote when the candidate beats production (if any) *and* the base model's own system (if measured) by
    more than ``margin``: a retrain never ships search worse than doing nothing. Where ``evidence`` holds paired
    tests (keys ``production``, ``base``, ``base_over_production``), a win must also pass them: better on all
    queries with one-sided p < ``alpha``, and not significantly worse on the unseen-document ones. A margin alone
    can promote noise.

    When the candidate loses and the base model's system beats production by the margin (or there is no
    production), the decision is ``ship_base``: the caller registers the base model and makes it production, so
    search serves the best system measured.
    """
    evidence = evidence or {}
    if margin < 0 or not math.isfinite(margin):
        raise ValueError(f"margin must be a finite number >= 0, got {margin}")
    if not math.isfinite(candidate.value):
        raise ValueError(f"candidate version {candidate.version}: {metric} is {candidate.value}")
    for role, other in (("production", production), ("the base model", base)):
        if other is not None and other.dataset_fingerprint != candidate.dataset_fingerprint:
            raise NotComparable(
                f"{metric} of candidate {candidate.version} comes from dataset {candidate.dataset_fingerprint}, "
                f"{role} {other.version}'s from {other.dataset_fingerprint}: re-evaluate {role} first"
            )

    def made(promote: bool, reason: str, ship_base: bool = False) -> Decision:
        return Decision(promote, reason, metric, margin, candidate, production, base, ship_base)

    def judged(verdict: str, figures: str, evidence: Evidence | None) -> tuple[bool, str]:
        """Better by the margin *and*, where per-query figures were given, by the paired tests."""
        if verdict != "better":
            return False, f"{verdict}: {figures}"
        failed = evidence.fails(alpha) if evidence is not None else None
        if failed:
            return False, f"{failed}: {figures}"
        shown = f", one-sided p = {evidence.p_better:.3f}" if evidence is not None else ""
        return True, f"better: {figures}{shown}"

    if production is not None and production.version == candidate.version:
        return made(False, f"version {candidate.version} is already production")
    reasons: list[str] = []
    beats_production = True
    if production is not None and math.isfinite(production.value):
        delta, figures = _versus(candidate, production, f"production v{production.version}", metric, margin)
        beats_production, why = judged(_verdict(delta, margin), figures, evidence.get("production"))
        reasons.append(why)
    elif production is not None:
        reasons.append(f"production version {production.version} has no usable {metric} ({production.value})")
    else:
        reasons.append("no production version yet")
    beats_base = True
    if base is not None:
        delta, figures = _versus(candidate, base, "the base model's system", metric, margin)
        beats_base, why = judged(_verdict(delta, margin), figures, evidence.get("base"))
        reasons.append(why)
    reason = "; ".join(reasons)
    if beats_production and beats_base:
        return made(True, reason)
    base_over_production = evidence.get("base_over_production")
    base_beats_production = base is not None and (
        production is None
        or not math.isfinite(production.value)
        or (
            _verdict(round(base.value, DECIMALS) - round(production.value, DECIMALS), margin) == "better"
            and (base_over_production is None or base_over_production.fails(alpha) is None)
        )
    )
    if base_beats_production:
        return made(False, f"{reason}: the base model's system ships", ship_base=True)
    return made(False, reason)


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
