"""Evaluator task metrics of the original and the compressed model, compared item by item.

A drop is the original's value minus the compressed one's (the other way round for a metric where
lower is better), so a positive drop is always a loss. Its standard error comes from the per-item
differences when both models were scored on the same items (a paired comparison: far tighter than
the two accuracies' own errors), else from the two standard errors as if independent.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

import numpy as np

from compressor.api import TaskScore

TaskResults = dict[str, dict[str, TaskScore]]  # task -> metric -> score


def flatten(results: TaskResults) -> dict[str, TaskScore]:
    """``{task: {metric: s}}`` as ``{"task.metric": s}``, the budgets' names."""
    return {f"{task}.{metric}": score for task, metrics in results.items() for metric, score in metrics.items()}


def drop_stderr(ref: TaskScore, cand: TaskScore) -> tuple[float | None, bool]:
    """The standard error of the drop, and whether it is paired (per item) or not."""
    if ref.samples is not None and cand.samples is not None and len(ref.samples) == len(cand.samples) >= 2:
        diff = np.asarray(ref.samples, dtype=float) - np.asarray(cand.samples, dtype=float)
        return float(diff.std(ddof=1) / math.sqrt(len(diff))), True
    if ref.stderr is not None and cand.stderr is not None:
        return math.hypot(ref.stderr, cand.stderr), False
    return None, False


def compare_tasks(ref: TaskResults, cand: TaskResults, confidence: float) -> dict[str, dict[str, Any]]:
    """Per ``task.metric`` measured on both models: both values, the drop, its standard error and interval."""
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    a, b = flatten(ref), flatten(cand)
    out: dict[str, dict[str, Any]] = {}
    for key in sorted(a.keys() & b.keys()):
        r, c = a[key], b[key]
        drop = (r.value - c.value) if r.higher_is_better else (c.value - r.value)
        se, paired = drop_stderr(r, c)
        out[key] = {"original": r.value, "original_stderr": r.stderr, "compressed": c.value,
                    "compressed_stderr": c.stderr, "drop": drop, "drop_stderr": se, "paired": paired,
                    "drop_ci": None if se is None else [drop - z * se, drop + z * se], "confidence": confidence,
                    "items": len(r.samples) if r.samples is not None else None,
                    "higher_is_better": r.higher_is_better}
    return out
