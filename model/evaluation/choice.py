"""Choices on evidence: a documented prior is used unless dev shows, by a paired test, that something beats it.

A few dozen dev queries cannot rank near-equal settings: the 95 % interval of a dev nDCG@10 over 72 queries is
about ±0.08, and the best of 44 configurations on such a split scored 0.013 below the field's priors on test
(docs/results.md). So every choice dev makes (fusion method and weight, BM25's k1/b, the served mode, the
recipe) follows one rule: the prior stands unless the dev winner beats it by a one-sided paired randomisation
test at ``alpha`` on the dev queries. The record of each choice (prior, dev winner, both dev figures, the p-value
and what was used) is logged with the run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Choice:
    """One choice made under the rule: ``used`` is ``prior`` unless ``dev_winner`` beat it with ``p_value <
    alpha``."""

    name: str
    prior: str
    dev_winner: str
    used: str
    prior_dev: float | None
    winner_dev: float | None
    p_value: float | None
    alpha: float
    queries: int
    reason: str

    @property
    def overruled(self) -> bool:
        return self.used != self.prior

    def as_dict(self) -> dict:
        return asdict(self)


def prior_only(name: str, prior: str, reason: str, alpha: float = 0.05) -> Choice:
    """The prior, used without a dev comparison (no dev split, too few queries, or a configured value)."""
    return Choice(name, prior, prior, prior, None, None, None, alpha, 0, reason)


def choose_on_evidence(
    name: str,
    prior: str,
    per_query: Mapping[str, Mapping[str, float]],
    alpha: float = 0.05,
    permutations: int = 10_000,
    metric: str = "ndcg@10",
    seed: int = 0,
) -> Choice:
    """``per_query``: each option's per-query dev figure (``{option: {query_id: value}}``), the prior among them.

    The dev winner is the option with the best mean (ties to the prior, then to the first listed); it is used only
    when it beats the prior with p < ``alpha`` by a one-sided paired randomisation test that accounts for the
    winner having been picked among all the options: the sign of each query's differences to the prior is flipped
    for every option at once, and the winner's mean difference is compared with the *largest* mean difference of
    each resample (Westfall & Young's single-step max-T). Testing the winner alone would let the best of 30
    near-equal options overrule the prior by noise far more often than ``alpha``.
    """
    if prior not in per_query:
        raise ValueError(f"{name}: the prior {prior!r} is not among the options {sorted(per_query)}")
    means = {option: _mean(values) for option, values in per_query.items()}
    winner = max(per_query, key=lambda option: (round(means[option], 9), option == prior))
    queries = sorted(set.intersection(*(set(values) for values in per_query.values())))
    if winner == prior or len(queries) < 2:
        why = "the prior is dev's best" if winner == prior else f"{len(queries)} shared dev queries: nothing to test"
        reason = f"{why} ({metric} {means[prior]:.4f} over {len(per_query[prior])} queries)"
        return Choice(name, prior, winner, prior, means[prior], means[winner], None, alpha, len(queries), reason)
    p_value = max_statistic_p_value(per_query, prior, winner, queries, permutations, seed)
    used = winner if p_value < alpha else prior
    verdict = "used" if used == winner else "not significant: the prior stands"
    reason = (
        f"dev winner {winner} {means[winner]:.4f} vs prior {prior} {means[prior]:.4f} over {len(queries)} queries, "
        f"one-sided p = {p_value:.3f} against the best of {len(per_query) - 1} options ({verdict}, alpha {alpha:g})"
    )
    return Choice(name, prior, winner, used, means[prior], means[winner], p_value, alpha, len(queries), reason)


def max_statistic_p_value(
    per_query: Mapping[str, Mapping[str, float]],
    prior: str,
    winner: str,
    queries: list[str],
    permutations: int = 10_000,
    seed: int = 0,
) -> float:
    """p of the winner's mean gain over the prior under sign flips applied to every option's differences at once,
    against the maximum over options (one-sided; with one alternative, the plain paired randomisation test)."""
    others = [option for option in per_query if option != prior]
    differences = np.array(
        [[per_query[option][q] - per_query[prior][q] for option in others] for q in queries], dtype=float
    )
    observed = differences[:, others.index(winner)].mean()
    rng = np.random.default_rng(seed)
    signs = rng.choice(np.array([-1.0, 1.0]), size=(permutations, len(queries)))
    maxima = (signs @ differences / len(queries)).max(axis=1)
    return float((1 + np.count_nonzero(maxima >= observed - 1e-12)) / (permutations + 1))


def read_choices(path: Path) -> list[dict]:
    """The choices a run recorded (``choices.jsonl``, one JSON object a line), in order; none when absent."""
    if not Path(path).is_file():
        return []
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def _mean(values: Mapping[str, float]) -> float:
    return sum(values.values()) / len(values) if values else 0.0
