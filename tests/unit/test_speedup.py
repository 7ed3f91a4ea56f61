"""The speed-up statistics: paired per-round ratios, the bootstrap interval, and the three-way verdict."""

from __future__ import annotations

import math

import numpy as np
import pytest

from compressor.speedup import MIN_ROUNDS, judge, paired_speedup, round_order, rounds_to_settle


def test_rounds_alternate_which_model_goes_first():
    assert round_order(4) == [("original", "compressed"), ("compressed", "original"),
                              ("original", "compressed"), ("compressed", "original")]


def test_estimate_is_the_geometric_mean_of_per_round_ratios():
    a, b = [10.0, 20.0, 40.0], [20.0, 30.0, 40.0]  # ratios 2, 1.5, 1
    sp = paired_speedup(a, b)
    assert sp.estimate == pytest.approx((2 * 1.5 * 1) ** (1 / 3), rel=1e-12)
    assert sp.ratios == pytest.approx([2.0, 1.5, 1.0])
    assert sp.low <= sp.estimate <= sp.high


def test_times_are_inverted_so_that_above_one_means_faster():
    sp = paired_speedup([0.2, 0.2, 0.2], [0.1, 0.1, 0.1], higher_is_faster=False)
    assert sp.estimate == pytest.approx(2.0) and sp.low == pytest.approx(2.0) and sp.high == pytest.approx(2.0)


def test_pairing_removes_a_drift_that_hits_both_models():
    # background load halves both rates over the run: the per-round ratio stays exactly 1.25
    load = np.linspace(1.0, 0.5, 8)
    sp = paired_speedup(list(100 * load), list(125 * load))
    assert sp.estimate == pytest.approx(1.25) and sp.high - sp.low == pytest.approx(0.0, abs=1e-12)


def test_interval_covers_the_spread_of_noisy_rounds():
    rng = np.random.default_rng(1)
    a = 100 * np.exp(rng.normal(0, 0.3, 20))
    b = 100 * np.exp(rng.normal(0, 0.3, 20))
    sp = paired_speedup(list(a), list(b))
    assert sp.low < 1.0 < sp.high  # same true speed: the interval must include 1
    assert sp.high / sp.low > 1.1  # and be wide enough to say so


def test_too_few_rounds_never_decide():
    sp = paired_speedup([10.0] * (MIN_ROUNDS - 1), [30.0] * (MIN_ROUNDS - 1))
    assert sp.low == 0.0 and math.isinf(sp.high)
    assert judge(sp, 1.1) == "inconclusive"
    assert rounds_to_settle(sp, 1.1) is None


def test_judge_passes_fails_or_is_inconclusive_by_the_interval():
    sp = paired_speedup([1.0, 1.0, 1.0, 1.0], [1.30, 1.32, 1.28, 1.31])
    assert judge(sp, 1.2) == "pass"
    assert judge(sp, 1.4) == "fail"
    assert judge(sp, sp.estimate) == "inconclusive"


def test_rounds_to_settle_follows_the_square_root_law():
    sp = paired_speedup([1.0] * 8, [1.0, 1.2, 0.9, 1.3, 1.1, 1.0, 1.25, 0.95])
    threshold = 1.05
    assert judge(sp, threshold) == "inconclusive"
    more = rounds_to_settle(sp, threshold)
    half = (math.log(sp.high) - math.log(sp.low)) / 2
    expected = 8 * (half / abs(math.log(sp.estimate) - math.log(threshold))) ** 2 - 8
    assert more == max(1, math.ceil(expected + 8) - 8)
    assert rounds_to_settle(sp, sp.estimate) is None  # on the threshold: no number of rounds settles it


def test_mismatched_rounds_are_refused():
    with pytest.raises(ValueError):
        paired_speedup([1.0, 2.0], [1.0])
