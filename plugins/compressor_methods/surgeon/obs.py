"""Pure KFAC/OBS maths: the loss cost of removing weights and the update that compensates the rest.

With the Fisher of a linear approximated as G ⊗ A and its inverse as G⁻¹ ⊗ A⁻¹ (both damped),
removing a set of weights Q costs ½ w_Qᵀ [(G⁻¹ ⊗ A⁻¹)_QQ]⁻¹ w_Q and the optimal change of the
others is ΔW = −G⁻¹ M A⁻¹, where M holds the solution of that system at Q. Rows, columns and
single elements are special cases in closed form. Every function takes fp32 tensors
W [out, in], A [in, in], G [out, out] and the inverses, on one device.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def element_costs(w: torch.Tensor, g_inv: torch.Tensor, a_inv: torch.Tensor) -> torch.Tensor:
    """Cost of removing each weight alone: ½·W_ij² / ([G⁻¹]_ii·[A⁻¹]_jj)."""
    return 0.5 * w.pow(2) / (torch.diagonal(g_inv)[:, None] * torch.diagonal(a_inv)[None, :])


def row_costs(w: torch.Tensor, a: torch.Tensor, g_inv: torch.Tensor) -> torch.Tensor:
    """Cost of removing each output row alone: ½·W_i A W_iᵀ / [G⁻¹]_ii."""
    return 0.5 * ((w @ a) * w).sum(1) / torch.diagonal(g_inv)


def column_costs(w: torch.Tensor, g: torch.Tensor, a_inv: torch.Tensor) -> torch.Tensor:
    """Cost of removing each input column alone: ½·W_jᵀ G W_j / [A⁻¹]_jj."""
    return 0.5 * ((g @ w) * w).sum(0) / torch.diagonal(a_inv)


def rows_cost(w: torch.Tensor, a: torch.Tensor, g_inv: torch.Tensor, rows: torch.Tensor) -> float:
    """Cost of removing the rows ``rows`` together: ½·tr((G⁻¹_RR)⁻¹ W_R A W_Rᵀ)."""
    wr = w[rows]
    return float(0.5 * (torch.linalg.solve(g_inv[rows][:, rows], wr @ a) * wr).sum())


def columns_cost(w: torch.Tensor, g: torch.Tensor, a_inv: torch.Tensor, cols: torch.Tensor) -> float:
    """Cost of removing the columns ``cols`` together: ½·tr((A⁻¹_CC)⁻¹ W_Cᵀ G W_C)."""
    wc = w[:, cols]
    return float(0.5 * (torch.linalg.solve(a_inv[cols][:, cols], (g @ wc).t()) * wc.t()).sum())


def remove_rows(w: torch.Tensor, g_inv: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Return W after removing ``rows`` with the OBS update ΔW = −G⁻¹_{:,R} (G⁻¹_RR)⁻¹ W_R (rows then zero)."""
    if rows.numel() == 0:
        return w.clone()
    delta = g_inv[:, rows] @ torch.linalg.solve(g_inv[rows][:, rows], w[rows])
    out = w - delta
    out[rows] = 0.0
    return out


def remove_columns(w: torch.Tensor, a_inv: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Return W after removing ``cols`` with the OBS update ΔW = −W_{:,C} (A⁻¹_CC)⁻¹ A⁻¹_{C,:} (cols then zero)."""
    if cols.numel() == 0:
        return w.clone()
    out = w - w[:, cols] @ torch.linalg.solve(a_inv[cols][:, cols], a_inv[cols])
    out[:, cols] = 0.0
    return out


def _spd_solve(k: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Solve batched SPD systems k x = b ([B, n, n], [B, n]); a batch whose Cholesky fails uses least squares."""
    chol, info = torch.linalg.cholesky_ex(k)
    if int(info.max()) == 0:
        return torch.cholesky_solve(b[..., None], chol)[..., 0]
    return torch.linalg.lstsq(k, b[..., None]).solution[..., 0]


def _kron_block(g_inv: torch.Tensor, a_inv: torch.Tensor, r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """(G⁻¹ ⊗ A⁻¹)_QQ for the elements at rows ``r``, columns ``c`` ([..., n]); SPD, a Schur product of SPD blocks."""
    return g_inv[r[..., :, None], r[..., None, :]] * a_inv[c[..., :, None], c[..., None, :]]


def row_chunks(counts: torch.Tensor, limit: int) -> list[torch.Tensor]:
    """Rows with a non-zero count, in order, grouped so that each group's total stays within ``limit``.

    A row whose own count exceeds ``limit`` forms a group alone: its weights are always solved together.
    """
    groups: list[torch.Tensor] = []
    rows = counts.nonzero().flatten()
    totals = counts[rows].tolist()
    start, running = 0, 0
    for i, n in enumerate(totals):
        if i > start and running + n > limit:
            groups.append(rows[start:i])
            start, running = i, 0
        running += n
    if start < len(totals):
        groups.append(rows[start:])
    return groups


def remove_elements(w: torch.Tensor, g_inv: torch.Tensor, a_inv: torch.Tensor, new: torch.Tensor,
                    pruned: torch.Tensor, max_correlate: int, sequential: bool = True, hold: bool = True,
                    repick: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                    batch_elements: int = 2**24) -> torch.Tensor:
    """Return W after removing the elements ``new`` (bool mask) with the Kronecker OBS update.

    ``pruned`` (which includes ``new``) holds every weight that must be zero afterwards.
    ``sequential`` solves chunks one after another, each on the weights the earlier chunks' updates
    left (so a later chunk compensates what an earlier one moved); otherwise row-major chunks of
    ``max_correlate`` are solved independently, in batches, and their updates summed (faster, but
    the cross-chunk interaction goes uncompensated).

    Sequential chunks are whole rows, grouped up to ``max_correlate`` weights. With ``hold`` a
    chunk's system holds every pruned weight of its rows, earlier shots' included, so the update
    keeps them at zero instead of moving them and having them zeroed afterwards, which would undo
    part of the compensation (without it, chunks are row-major runs of ``new`` alone, as in the
    paper's code). ``repick(rows, W[rows])``, when given, returns the pruned mask of those rows
    just before their chunk is solved (N:M: which weights of a block go, chosen from the weights the
    earlier chunks left); it is written into ``pruned`` and ``new`` in place.
    """
    if not sequential:
        return _remove_summed(w, g_inv, a_inv, new, pruned, max_correlate, batch_elements)
    out = w.clone()
    if hold or repick is not None:
        chunks = row_chunks(pruned.sum(1) * new.any(1), max_correlate)
    else:
        idx = new.nonzero()
        size = max(1, max_correlate)
        chunks = [idx[i:i + size] for i in range(0, idx.shape[0], size)]
    for chunk in chunks:
        if chunk.dim() == 2:  # a run of elements
            r, c = chunk[:, 0], chunk[:, 1]
            rows, local = torch.unique(r, return_inverse=True)  # M is non-zero only on these rows
        else:
            rows = chunk
            if repick is not None:
                old = pruned[rows] & ~new[rows]
                pruned[rows] = repick(rows, out[rows])
                new[rows] = pruned[rows] & ~old
            local, c = (pruned[rows] if hold else new[rows]).nonzero(as_tuple=True)
            r = rows[local]
        x = _spd_solve(_kron_block(g_inv, a_inv, r, c)[None], out[r, c][None])[0]
        m = torch.zeros(rows.numel(), w.shape[1], dtype=w.dtype, device=w.device)
        m[local, c] = x
        out -= g_inv[:, rows] @ (m @ a_inv)
        out[r, c] = 0.0
    out[pruned] = 0.0
    return out


def _remove_summed(w: torch.Tensor, g_inv: torch.Tensor, a_inv: torch.Tensor, new: torch.Tensor,
                   pruned: torch.Tensor, max_correlate: int, batch_elements: int) -> torch.Tensor:
    idx = new.nonzero()
    size = max(1, min(max_correlate, idx.shape[0]))
    m = torch.zeros_like(w)
    full = idx.shape[0] // size * size
    per_batch = max(1, batch_elements // (size * size))
    parts = [idx[:full].reshape(-1, size, 2)[i:i + per_batch] for i in range(0, full // size, per_batch)]
    if full < idx.shape[0]:
        parts.append(idx[full:][None])
    for part in parts:
        r, c = part[..., 0], part[..., 1]  # [B, n]
        m[r, c] = _spd_solve(_kron_block(g_inv, a_inv, r, c), w[r, c])
    out = w - g_inv @ m @ a_inv
    out[pruned] = 0.0
    return out
