"""Mask maths shared by magnitude, Wanda and SparseGPT: which weights to zero, given scores.

Every function returns a boolean *prune* mask (True = set to zero) shaped like ``scores``;
lower scores are pruned first. Selection uses ``topk`` (much faster than a full sort on CPU),
so exactly the requested count is pruned; which of exactly tied scores goes is unspecified.
"""

from __future__ import annotations

import re

import torch

from compressor.api import UsageError

_PATTERN = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_pattern(pattern: str) -> tuple[int, int]:
    """Parse ``"N:M"`` (N zeros in every M consecutive weights) into ``(N, M)``."""
    match = _PATTERN.match(pattern)
    if not match:
        raise UsageError(f"sparsity pattern {pattern!r} is not of the form 'N:M'", hint="use e.g. '2:4' or '4:8'")
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise UsageError(f"sparsity pattern {pattern!r} needs 0 < N < M", hint="use e.g. '2:4' or '4:8'")
    return n, m


def per_row_count(columns: int, sparsity: float) -> int:
    """How many weights of a row of ``columns`` to prune for ``sparsity`` (floor, as Wanda does)."""
    return int(columns * sparsity)


def prune_mask_per_row(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune the ``floor(cols·sparsity)`` lowest scores of every row: exactly the same count per row."""
    k = per_row_count(scores.shape[-1], sparsity)
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if k > 0:
        idx = torch.topk(scores, k, dim=-1, largest=False, sorted=False).indices
        mask.scatter_(-1, idx, True)
    return mask


def prune_mask_n_m(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Prune the ``n`` lowest scores in every group of ``m`` consecutive columns of every row."""
    rows, cols = scores.shape
    if cols % m:
        raise UsageError(f"a matrix with {cols} input columns cannot hold a {n}:{m} pattern",
                         hint=f"the input width must be a multiple of {m}; exclude this module")
    groups = scores.reshape(rows, cols // m, m)
    idx = torch.topk(groups, n, dim=-1, largest=False, sorted=False).indices
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(-1, idx, True)
    return mask.reshape(rows, cols)


def prune_mask_global(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """Prune the ``floor(numel·fraction)`` lowest scores of the whole tensor (SparseGPT's block mask)."""
    k = int(scores.numel() * fraction)
    mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if k > 0:
        idx = torch.topk(scores.reshape(-1), k, largest=False, sorted=False).indices
        mask[idx] = True
    return mask.reshape(scores.shape)


def prune_mask_cumulative(scores: torch.Tensor, sparsity: float, tolerance: float = 1e-3,
                          iterations: int = 50) -> torch.Tensor:
    """Wanda's variant: per row, prune the prefix whose cumulative score ≤ α·row total, α bisected to ``sparsity``."""
    sorted_scores, order = torch.sort(scores, dim=-1, stable=True)
    cum = torch.cumsum(sorted_scores.double(), dim=-1)
    total = cum[..., -1:].clamp_min(torch.finfo(torch.float64).tiny)

    def prefix(alpha: float) -> torch.Tensor:
        return cum <= alpha * total

    lo, hi, alpha = 0.0, 0.8, 0.4
    chosen = prefix(alpha)
    for _ in range(iterations):
        achieved = chosen.float().mean().item()
        if abs(achieved - sparsity) <= tolerance:
            break
        if achieved > sparsity:
            hi = alpha
        else:
            lo = alpha
        alpha = (lo + hi) / 2
        chosen = prefix(alpha)
    mask = torch.zeros_like(scores, dtype=torch.bool)
    mask.scatter_(-1, order, chosen)
    return mask


def check_n_m(weight: torch.Tensor, n: int, m: int) -> bool:
    """True when every group of ``m`` consecutive weights of every row has at least ``n`` zeros."""
    rows, cols = weight.shape
    if cols % m:
        return False
    zeros = (weight.reshape(rows, cols // m, m) == 0).sum(-1)
    return bool((zeros >= n).all())


def sparsity_of(weight: torch.Tensor) -> float:
    """Fraction of exactly-zero entries."""
    return float((weight == 0).sum().item() / max(weight.numel(), 1))
