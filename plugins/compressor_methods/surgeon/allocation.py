"""One global threshold across the whole model: how many weights or structures each matrix or layer loses.

Because every candidate competes on one scale, layers end up with different sparsities or sizes
(the method's "dynamic allocation"). Already-removed candidates are passed with cost −inf so they
always stay removed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def _count_below(sorted_costs: list[torch.Tensor], caps: list[int], tau: float) -> int:
    return sum(min(cap, int(torch.searchsorted(c, tau, right=True))) for c, cap in zip(sorted_costs, caps))


def global_counts(costs: list[torch.Tensor], target: int, caps: list[int]) -> list[int]:
    """Per tensor of candidate costs, how many of its lowest to remove so the total reaches ``target``.

    One threshold τ applies to all tensors; tensor i gives at most ``caps[i]``. The total is the
    smallest ≥ ``target`` that τ can give (more only on exactly tied costs), or every candidate
    under the caps when ``target`` exceeds that.
    """
    sorted_costs = [torch.sort(c.reshape(-1).double().cpu()).values for c in costs]
    finite = torch.cat([c[torch.isfinite(c)] for c in sorted_costs] + [torch.zeros(1, dtype=torch.float64)])
    lo, hi = float(finite.min()) - 1.0, float(finite.max()) + 1.0
    if _count_below(sorted_costs, caps, hi) <= target:
        tau = hi
    else:
        for _ in range(200):  # bisection on τ; the count is monotone in τ
            mid = (lo + hi) / 2
            if mid in (lo, hi):
                break
            if _count_below(sorted_costs, caps, mid) >= target:
                hi = mid
            else:
                lo = mid
        tau = hi
    return [min(cap, int(torch.searchsorted(c, tau, right=True))) for c, cap in zip(sorted_costs, caps)]


def lowest_mask(costs: torch.Tensor, count: int) -> torch.Tensor:
    """Boolean mask of the ``count`` lowest entries of ``costs``."""
    mask = torch.zeros(costs.numel(), dtype=torch.bool, device=costs.device)
    if count > 0:
        mask[torch.topk(costs.reshape(-1), count, largest=False, sorted=False).indices] = True
    return mask.reshape(costs.shape)


def lowest_per_row(costs: torch.Tensor, count: int) -> torch.Tensor:
    """Boolean mask of the ``count`` lowest entries in every row of ``costs`` [rows, n]."""
    mask = torch.zeros_like(costs, dtype=torch.bool)
    if count > 0:
        mask.scatter_(1, torch.topk(costs, count, dim=1, largest=False, sorted=False).indices, True)
    return mask


def n_m_block_costs(costs: torch.Tensor, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per group of ``m`` consecutive weights in a row: the sum of its ``n`` lowest costs, and their mask."""
    rows, cols = costs.shape
    groups = costs.reshape(rows, cols // m, m)
    low = torch.topk(groups, n, dim=-1, largest=False, sorted=False)
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(-1, low.indices, True)
    return low.values.sum(-1), mask.reshape(rows, cols)


@dataclass(frozen=True)
class Structure:
    """A removable structure: an MLP neuron or a KV group of one layer."""

    layer: int
    kind: str  # "neuron" or "kv_group"
    index: int
    cost: float
    params: int


def choose_structures(candidates: list[Structure], remove_params: int,
                      minimum: dict[tuple[int, str], int], alive: dict[tuple[int, str], int]) -> list[Structure]:
    """Take structures in order of cost per parameter until ``remove_params`` are gone.

    A layer never drops below ``minimum[(layer, kind)]`` structures of a kind (``alive`` counts them now).
    """
    left = dict(alive)
    chosen: list[Structure] = []
    removed = 0
    for s in sorted(candidates, key=lambda s: (s.cost / max(s.params, 1), s.layer, s.index)):
        if removed >= remove_params:
            break
        key = (s.layer, s.kind)
        if left[key] <= minimum.get(key, 1):
            continue
        left[key] -= 1
        chosen.append(s)
        removed += s.params
    return chosen


def _sorted_neurons(candidates: list[Structure]) -> dict[int, list[Structure]]:
    per: dict[int, list[Structure]] = {}
    for s in sorted(candidates, key=lambda s: (s.cost / max(s.params, 1), s.index)):
        if s.kind == "neuron":
            per.setdefault(s.layer, []).append(s)
    return per


def align_widths(chosen: list[Structure], candidates: list[Structure], multiple: int, remove_params: int,
                 minimum: dict[tuple[int, str], int]) -> list[Structure]:
    """Adjust the chosen MLP neurons so every layer keeps a multiple of ``multiple`` neurons (or all of them).

    Kernels run odd widths slowly (bench/surgeon_speed.py: SmolLM2 with widths like 1099 prefilled
    slower in llama.cpp than the dense model, though 16% smaller). Each layer first keeps the next multiple
    up; then whole blocks of the cheapest remaining neurons are taken, cheapest block first, until
    ``remove_params`` is reached again, so the total overshoots by less than one block.
    """
    if multiple <= 1:
        return chosen
    per = _sorted_neurons(candidates)
    taken = {layer: sum(1 for s in chosen if s.kind == "neuron" and s.layer == layer) for layer in per}
    for layer, order in per.items():
        kept = len(order) - taken[layer]
        taken[layer] = len(order) - min(len(order), -(-kept // multiple) * multiple)
    others = [s for s in chosen if s.kind != "neuron"]
    removed = sum(s.params for s in others) + sum(sum(s.params for s in per[i][:n]) for i, n in taken.items())
    while removed < remove_params:
        best: tuple[float, int, int] | None = None
        for layer, order in per.items():
            kept = len(order) - taken[layer]
            target = (kept - 1) // multiple * multiple  # the next lower multiple
            floor = -(-minimum.get((layer, "neuron"), 1) // multiple) * multiple
            if target < max(floor, multiple):
                continue
            block = order[taken[layer]:len(order) - target]
            score = sum(s.cost for s in block) / max(sum(s.params for s in block), 1)
            if best is None or score < best[0]:
                best = (score, layer, len(block))
        if best is None:
            break
        _, layer, count = best
        removed += sum(s.params for s in per[layer][taken[layer]:taken[layer] + count])
        taken[layer] += count
    return others + [s for i, n in taken.items() for s in per[i][:n]]
