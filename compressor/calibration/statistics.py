"""Per-linear input statistics accumulated in fp32 while calibration data flows through a layer.

A statistic sees only the *input* of a linear, so linears fed by the same tensor
(q/k/v, gate/up) share one accumulator and the work is done once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from compressor.distributed import active, all_reduce_sum_, sum_int
from compressor.errors import UsageError


class Statistic(Protocol):
    """An accumulator over the inputs ``x`` ([..., in_features]) of one linear."""

    def update(self, x: torch.Tensor) -> None:
        """Add a chunk of inputs."""

    def result(self) -> torch.Tensor:
        """Return the accumulated value (fp32); callers must treat it as read-only."""

    # Optional, for data-parallel calibration: ``all_reduce(self) -> None`` combines this rank's
    # accumulator with the other ranks' in place (usually a sum of its state through
    # compressor.api.all_reduce_sum_), so that result() is the statistic of all ranks' windows.


# A factory gets the linear's input width and the device the statistic should live on.
StatisticFactory = Callable[[int, torch.device], Statistic]


# Running sums are kept in float64 while each chunk's contribution is computed in float32: the sum is then
# nearly independent of the order the chunks are added in, so that N data-parallel ranks (each summing its
# share, then all-reduced) give the single-process statistics to the last float32 bit in nearly every entry,
# and the masks and weights that depend on them agree too. The cost is one elementwise add per chunk.
ACCUMULATE = torch.float64


class InputSquaredNorm:
    """Mean over tokens of x_j² per input channel j (Wanda's ‖X_j‖₂², up to a constant)."""

    def __init__(self, in_features: int, device: torch.device) -> None:
        self.sums = torch.zeros(in_features, dtype=ACCUMULATE, device=device)
        self.tokens = 0

    def update(self, x: torch.Tensor) -> None:
        """Add the squares of a chunk of inputs."""
        for window in x.reshape(-1, *x.shape[-2:]) if x.dim() > 2 else [x]:  # per window, as for the Hessian
            window = window.float()
            self.sums += (window * window).sum(0)
            self.tokens += window.shape[0]

    def all_reduce(self) -> None:
        """Sum the squares and token counts of every rank."""
        all_reduce_sum_(self.sums)
        self.tokens = sum_int(self.tokens)

    def result(self) -> torch.Tensor:
        """Return the per-channel mean of x²."""
        return self.sums.to(torch.float32).div_(max(self.tokens, 1))


class InputHessian:
    """H = 2/T · Σ x xᵀ over all T calibration tokens (SparseGPT, GPTQ), kept in fp32."""

    def __init__(self, in_features: int, device: torch.device) -> None:
        self.h = torch.zeros(in_features, in_features, dtype=ACCUMULATE, device=device)
        self.tokens = 0

    def update(self, x: torch.Tensor) -> None:
        """Add x xᵀ for a chunk of inputs."""
        # one float32 product per window (a sequence), added to the float64 sum: the result then does not depend
        # on how windows were grouped into batches, so ranks holding different batches still agree
        for window in x.reshape(-1, *x.shape[-2:]) if x.dim() > 2 else [x]:
            window = window.float()
            self.h += window.t() @ window
            self.tokens += window.shape[0]

    def all_reduce(self) -> None:
        """Sum the outer products and token counts of every rank."""
        all_reduce_sum_(self.h)
        self.tokens = sum_int(self.tokens)

    def result(self) -> torch.Tensor:
        """Return the averaged Hessian."""
        return self.h.to(torch.float32).mul_(2.0 / max(self.tokens, 1))


BUILTIN_STATISTICS: dict[str, StatisticFactory] = {
    "input_sq_norm": InputSquaredNorm,
    "hessian": InputHessian,
}


def statistic_bytes(name: str, in_features: int) -> int:
    """Rough size of a built-in statistic, for the memory estimate (custom ones: vector-sized).

    A Hessian is a float64 sum plus a float32 chunk product (or the float32 result): 12 bytes per entry.
    """
    return 12 * in_features * in_features if name == "hessian" else 12 * in_features


def reduce_statistic(name: str, statistic: Statistic) -> None:
    """Combine ``statistic`` over the ranks of a data-parallel run (a no-op in one process)."""
    if not active():
        return
    reduce = getattr(statistic, "all_reduce", None)
    if reduce is None:
        raise UsageError(f"statistic {name!r} ({type(statistic).__name__}) cannot be combined across processes",
                         hint="give it an all_reduce() method (see compressor.calibration.statistics), "
                              "or run one process")
    reduce()
