"""Speed-up from interleaved timing rounds: a paired estimate, its bootstrap interval, and a verdict.

Each round times the original (A) and the compressed model (B) back to back, alternating which
goes first (A B, B A, ...), so that a drift in background load hits both alike. The speed-up of
a round is B's rate over A's; rounds are the unit of resampling.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

BOOTSTRAP_RESAMPLES = 10_000
MIN_ROUNDS = 3  # fewer rounds give no usable spread: the result is always inconclusive


@dataclass(frozen=True)
class Speedup:
    """Geometric mean of per-round ratios with a percentile-bootstrap confidence interval."""

    estimate: float
    low: float
    high: float
    confidence: float
    rounds: int
    ratios: list[float]

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable view."""
        return asdict(self)


def round_order(rounds: int) -> list[tuple[str, str]]:
    """The order of each round: A B, B A, A B, ... (A = original, B = compressed)."""
    return [("original", "compressed") if r % 2 == 0 else ("compressed", "original") for r in range(rounds)]


def paired_speedup(original: Sequence[float], compressed: Sequence[float], higher_is_faster: bool = True,
                   confidence: float = 0.95, seed: int = 0) -> Speedup:
    """Speed-up of compressed over original from per-round rates (or, with ``higher_is_faster=False``, times)."""
    a = np.asarray(original, dtype=np.float64)
    b = np.asarray(compressed, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"need one value per round for both models, got {a.shape} and {b.shape}")
    ratios = b / a if higher_is_faster else a / b
    logs = np.log(ratios)
    estimate = float(np.exp(logs.mean()))
    if len(logs) < MIN_ROUNDS:
        low, high = 0.0, math.inf
    else:
        rng = np.random.default_rng(seed)
        means = logs[rng.integers(0, len(logs), size=(BOOTSTRAP_RESAMPLES, len(logs)))].mean(axis=1)
        tail = 100 * (1 - confidence) / 2
        low, high = (float(np.exp(x)) for x in np.percentile(means, [tail, 100 - tail]))
    return Speedup(estimate, low, high, confidence, len(logs), [float(r) for r in ratios])


Verdict = Literal["pass", "fail", "inconclusive"]


def judge_interval(low: float, high: float, limit: float, kind: Literal["min", "max"]) -> Verdict:
    """The gate's rule for a noisy figure: pass when the whole interval is on the right side of ``limit``,
    fail when it lies wholly on the wrong side, else inconclusive (the difference is within the noise)."""
    if kind == "max":
        low, high, limit = -high, -low, -limit
    if low >= limit:
        return "pass"
    if high < limit:
        return "fail"
    return "inconclusive"


def judge(speedup: Speedup, threshold: float) -> Verdict:
    """Pass when the whole interval clears ``threshold``, fail when it lies wholly below, else inconclusive."""
    return judge_interval(speedup.low, speedup.high, threshold, "min")


def rounds_to_settle(speedup: Speedup, threshold: float) -> int | None:
    """Rough count of further rounds after which the interval would no longer straddle ``threshold``.

    The interval's half-width shrinks like 1/sqrt(rounds); None means it cannot be settled
    (the estimate sits on the threshold, or there are too few rounds to know the spread).
    """
    if speedup.rounds < MIN_ROUNDS or not math.isfinite(speedup.high) or speedup.low <= 0:
        return None
    distance = abs(math.log(speedup.estimate) - math.log(threshold))
    half_width = (math.log(speedup.high) - math.log(speedup.low)) / 2
    if distance == 0:
        return None
    needed = speedup.rounds * (half_width / distance) ** 2
    return max(1, math.ceil(needed) - speedup.rounds)
