"""Structured OBS for width pruning: remove whole input-column groups of a linear and update the rest.

Removing column set S of W with inverse Hessian K = H⁻¹ costs tr(W_S (K_SS)⁻¹ W_Sᵀ) and the optimal
update of the remaining columns is W ← W − W_S (K_SS)⁻¹ K_S,: ; afterwards K restricted to the kept
columns is updated the same way (a Schur complement), so groups are removed greedily.
"""

from __future__ import annotations

import torch

from compressor_methods.sparsegpt.sparsify import damped_hessian


def obs_remove_column_groups(weight: torch.Tensor, hessian: torch.Tensor, groups: list[torch.Tensor], count: int,
                             percdamp: float = 0.01, per_step: int = 1) -> tuple[torch.Tensor, list[int]]:
    """Greedily remove ``count`` of ``groups`` (column-index tensors); return the updated weight and their ids."""
    h, w = damped_hessian(hessian, weight, percdamp)
    k = torch.cholesky_inverse(torch.linalg.cholesky(h))
    del h
    device = w.device
    groups = [g.to(device) for g in groups]
    alive = list(range(len(groups)))
    removed: list[int] = []
    single = all(g.numel() == 1 for g in groups)
    while len(removed) < count:
        if single:
            idx = torch.cat([groups[g] for g in alive])
            scores = w[:, idx].pow(2).sum(0) / torch.diagonal(k)[idx]
        else:
            scores = torch.stack([_group_cost(w, k, groups[g]) for g in alive])
        take = min(per_step, count - len(removed))
        order = torch.sort(scores, stable=True).indices[:take].tolist()
        chosen = [alive[i] for i in order]
        cols = torch.cat([groups[g] for g in chosen])
        k_ss = k[cols][:, cols]
        solve = torch.linalg.solve(k_ss, k[cols, :])  # (K_SS)⁻¹ K_S,:
        w -= w[:, cols] @ solve
        k -= k[:, cols] @ solve
        w[:, cols] = 0.0
        k[cols, :] = 0.0
        k[:, cols] = 0.0
        k[cols, cols] = 1.0  # keep K invertible on removed columns; they are never chosen again
        removed.extend(chosen)
        alive = [g for g in alive if g not in chosen]
    return w, removed


def _group_cost(w: torch.Tensor, k: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    ws = w[:, cols]
    return (torch.linalg.solve(k[cols][:, cols], ws.t()).t() * ws).sum()
