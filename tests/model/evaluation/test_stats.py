"""Seeds' spread, averaging over seeds, the paired tests and Holm's correction."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from denseflow.model.evaluation.stats import average_over_seeds, holm, mean_std, paired_test


def test_mean_std_is_the_sample_deviation():
    assert mean_std([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0))
    assert mean_std([0.5]) == (0.5, 0.0)
    with pytest.raises(ValueError):
        mean_std([])


def test_average_over_seeds_needs_the_same_queries():
    assert average_over_seeds([{"a": 1.0, "b": 0.0}, {"a": 0.0, "b": 0.0}]) == {"a": 0.5, "b": 0.0}
    with pytest.raises(ValueError, match="different queries"):
        average_over_seeds([{"a": 1.0}, {"b": 1.0}])


def test_small_sample_p_value_is_the_exact_sign_flip_distribution():
    rng = np.random.default_rng(3)
    base = rng.random(8)
    candidate = base + rng.normal(0.1, 0.1, 8)
    a = {str(i): float(x) for i, x in enumerate(candidate)}
    b = {str(i): float(x) for i, x in enumerate(base)}
    difference = candidate - base
    observed = abs(difference.mean())
    flips = [abs(np.mean(difference * np.array(signs))) for signs in itertools.product((1, -1), repeat=8)]
    exact = np.mean([flip >= observed - 1e-12 for flip in flips])
    test = paired_test(a, b, "recall@10", permutations=1000)  # 2^8 = 256 < 1000: scipy enumerates
    assert test.p_value == pytest.approx(exact)
    assert test.queries == 8
    assert test.mean_difference == pytest.approx(difference.mean())


def test_a_real_gain_is_found_and_noise_is_not():
    rng = np.random.default_rng(0)
    queries = [f"q{i}" for i in range(300)]
    baseline = {q: float(rng.random() < 0.5) for q in queries}
    better = {q: 1.0 if rng.random() < 0.3 else value for q, value in baseline.items()}
    noise = {q: float(rng.random() < 0.5) for q in queries}
    gain = paired_test(better, baseline, "recall@10", seed=1)
    assert gain.p_value < 0.001
    assert gain.p_ttest < 0.001
    assert gain.losses == 0
    assert gain.wins > 30
    assert paired_test(noise, baseline, "recall@10", seed=1).p_value > 0.05
    same = paired_test(baseline, baseline, "recall@10")
    assert (same.p_value, same.p_ttest, same.ties, same.mean_difference) == (1.0, 1.0, 300, 0.0)
    with pytest.raises(ValueError, match="at least 2"):
        paired_test({"a": 1.0}, {"a": 0.0}, "recall@10")


def test_holm_adjusts_in_step_down_order():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []
