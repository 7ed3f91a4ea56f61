"""Which layers to remove, from per-layer or per-block scores (pure NumPy, ties go to the lowest index)."""

from __future__ import annotations

import numpy as np


def lowest(scores: np.ndarray, count: int) -> list[int]:
    """Indices of the ``count`` lowest scores, in increasing order of score (stable: lower index first)."""
    order = np.argsort(np.asarray(scores, dtype=np.float64), kind="stable")
    return [int(i) for i in order[:count]]


def consecutive(start: int, count: int) -> list[int]:
    """The layer indices start..start+count−1."""
    return list(range(start, start + count))


def argmin_start(distances: np.ndarray) -> int:
    """The block start with the smallest distance (Gromov et al.: the most redundant block)."""
    return int(np.argmin(np.asarray(distances, dtype=np.float64)))


def argmax_start(similarities: np.ndarray) -> int:
    """The block start with the largest similarity (LLM-Streamline: the least important block)."""
    return int(np.argmax(np.asarray(similarities, dtype=np.float64)))
