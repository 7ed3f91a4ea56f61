"""Pure KFAC/OBS maths: the loss cost of removing weights and the update that compensates the rest.

With the Fisher of a linear approximated as G ⊗ A and its inverse as G⁻¹ ⊗ A⁻¹ (both damped),
removing a set of weights Q costs ½ w_Qᵀ [(G⁻¹ ⊗ A⁻¹)_QQ]⁻¹ w_Q and the optimal change of the
others is ΔW = −G⁻¹ M A⁻¹, where M holds the solution of that system at Q. Rows, columns and
single elements are special cases in closed form. Every function takes fp32 tensors
W [out, in], A [in, in], G [out, out] and the inverses, on one device.
"""

from __future__ import annotations

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


def remove_elements(w: torch.Tensor, g_inv: torch.Tensor, a_inv: torch.Tensor, new: torch.Tensor,
                    pruned: torch.Tensor, max_correlate: int, sequential: bool = True,
                    batch_elements: int = 2**24) -> torch.Tensor:
    """Return W after removing the elements ``new`` (bool mask) with the Kronecker OBS update.

    The weights are taken in row-major chunks of ``max_correlate``; within a chunk their
    correlations are exact. ``sequential`` solves the chunks one after another, each on the
    weights the earlier chunks' updates left (so a later chunk compensates what an earlier one
    moved); otherwise the chunks are solved independently, in batches, and their updates
    summed, which is faster but leaves the cross-chunk interaction uncompensated. Every entry
    of ``pruned`` (which includes ``new``) is zero afterwards.
    """
    idx = new.nonzero()
    size = max(1, min(max_correlate, idx.shape[0]))
    if sequential:
        out = w.clone()
        for start in range(0, idx.shape[0], size):
            r, c = idx[start:start + size, 0], idx[start:start + size, 1]
            x = _spd_solve(_kron_block(g_inv, a_inv, r, c)[None], out[r, c][None])[0]
            rows, local = torch.unique(r, return_inverse=True)  # M is non-zero only on these rows
            m = torch.zeros(rows.numel(), w.shape[1], dtype=w.dtype, device=w.device)
            m[local, c] = x
            out -= g_inv[:, rows] @ (m @ a_inv)
            out[r, c] = 0.0
        out[pruned] = 0.0
        return out
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
