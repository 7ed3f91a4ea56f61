"""One shot of unstructured or N:M surgery: global element (or block) threshold, then Kronecker OBS updates."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from compressor_methods.surgeon.allocation import global_counts, lowest_mask, lowest_per_row, n_m_block_costs
from compressor_methods.surgeon.kfac import KronFactors, balance, damped_inverse
from compressor_methods.surgeon.obs import element_costs, remove_elements
from compressor_methods.surgeon.store import FactorStore


@dataclass
class Inverses:
    """Damped inverses of one linear's balanced KFAC factors."""

    a_inv: torch.Tensor
    g_inv: torch.Tensor


def invert(f: KronFactors, damp_a: float, damp_g: float, device: torch.device,
           store: FactorStore | None = None) -> Inverses:
    """Balance the factors and invert them (dampened) on ``device``; keep the results in ``store``."""
    b = balance(f)
    store = store or FactorStore(f.a.device)
    return Inverses(store.keep(damped_inverse(b.a.to(device), damp_a)),
                    store.keep(damped_inverse(b.g.to(device), damp_g)))


class ElementState:
    """The pruned set of every targeted matrix across shots (unstructured or N:M)."""

    def __init__(self, linears: dict[str, nn.Linear], n_m: tuple[int, int] | None, min_density: float,
                 n_m_schedule: str = "global") -> None:
        self.linears = linears
        self.n_m = n_m
        self.n_m_schedule = n_m_schedule
        self.min_density = min_density
        self.masks = {name: torch.zeros_like(lin.weight, dtype=torch.bool) for name, lin in linears.items()}
        self.total = sum(lin.weight.numel() for lin in linears.values())

    def shot(self, fraction: float, inverses: dict[str, Inverses], max_correlate: int,
             sequential: bool = True, hold: bool = True, repick: bool = True) -> None:
        """Grow the pruned sets to ``fraction`` of all weights (or N:M blocks) and update the weights.

        ``hold`` and ``repick`` are passed to :func:`remove_elements` (``repick`` only matters for N:M).
        """
        names = list(self.linears)
        new_masks = self._choose(names, fraction, inverses)
        for name in names:
            lin = self.linears[name]
            w = lin.weight.data.float()
            new = new_masks[name] & ~self.masks[name]
            if bool(new.any()):
                inv = inverses[name]
                g_inv, a_inv = inv.g_inv.to(w.device), inv.a_inv.to(w.device)
                chooser = self._repicker(name, new, g_inv, a_inv) if repick and sequential and self.n_m else None
                self.masks[name] |= new
                w = remove_elements(w, g_inv, a_inv, new, self.masks[name], max_correlate, sequential, hold,
                                    chooser)
            else:
                w[self.masks[name]] = 0.0
            lin.weight.data.copy_(w.to(lin.weight.dtype))

    def _repicker(self, name: str, new: torch.Tensor, g_inv: torch.Tensor,
                  a_inv: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """For N:M: re-choose the N weights of each newly pruned block from the rows' current weights."""
        assert self.n_m is not None
        n, m = self.n_m
        fresh = new.reshape(new.shape[0], -1, m).any(-1).repeat_interleave(m, dim=1)  # blocks pruned this shot
        masks = self.masks[name]

        def repick(rows: torch.Tensor, w_rows: torch.Tensor) -> torch.Tensor:
            _, lowest = n_m_block_costs(element_costs(w_rows, g_inv[rows][:, rows], a_inv), n, m)
            return torch.where(fresh[rows], lowest, masks[rows])

        return repick

    def _costs(self, name: str, inv: Inverses) -> torch.Tensor:
        w = self.linears[name].weight.data.float()
        return element_costs(w, inv.g_inv.to(w.device), inv.a_inv.to(w.device))

    def _choose(self, names: list[str], fraction: float, inverses: dict[str, Inverses]) -> dict[str, torch.Tensor]:
        if self.n_m is None:
            costs, caps = [], []
            for name in names:
                c = self._costs(name, inverses[name])
                c[self.masks[name]] = float("-inf")
                costs.append(c)
                caps.append(max(int(c.numel() * (1 - self.min_density)), int(self.masks[name].sum())))
            counts = global_counts(costs, round(self.total * fraction), caps)
            return {name: lowest_mask(c, k) for name, c, k in zip(names, costs, counts)}
        n, m = self.n_m
        blocks, masks = [], []
        for name in names:
            block_cost, mask = n_m_block_costs(self._costs(name, inverses[name]), n, m)
            old = self.masks[name].reshape(mask.shape[0], -1, m)
            done = old.any(-1)
            block_cost[done] = float("-inf")  # a pruned block keeps the weights it lost
            mask = torch.where(done[..., None], old, mask.reshape(old.shape)).reshape(mask.shape)
            blocks.append(block_cost)
            masks.append(mask)
        if self.n_m_schedule == "per_row":
            # every matrix ends at N:M anyway; pruning the same share of each row per shot keeps any
            # matrix from meeting all of its pruning, at stale curvature, in the last shot
            chosen_blocks = [lowest_per_row(b, round(b.shape[1] * fraction)) for b in blocks]
        else:
            total_blocks = sum(b.numel() for b in blocks)
            counts = global_counts(blocks, round(total_blocks * fraction), [b.numel() for b in blocks])
            chosen_blocks = [lowest_mask(b, k) for b, k in zip(blocks, counts)]
        return {name: (mask.reshape(*b.shape, -1) & chosen[..., None]).reshape(mask.shape)
                for name, b, mask, chosen in zip(names, blocks, masks, chosen_blocks)}

    def sparsity(self) -> dict[str, float]:
        """Achieved fraction of zeros per matrix."""
        return {name: round(float((lin.weight == 0).float().mean()), 6) for name, lin in self.linears.items()}

    def overall(self) -> float:
        """Achieved fraction of zeros over all targeted weights."""
        zeros = sum(int((lin.weight == 0).sum()) for lin in self.linears.values())
        return zeros / max(self.total, 1)
