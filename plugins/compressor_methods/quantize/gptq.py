"""GPTQ's pure tensor maths (Frantar et al., arXiv 2210.17323): quantize columns one at a time and
push each column's rounding error onto the columns not yet quantized, using the inverse input Hessian.

SparseGPT's sibling: the same dampening, upper Cholesky factor of H⁻¹ and lazy batched updates in
column blocks; the per-column step rounds instead of pruning. All arithmetic in fp32, any device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from compressor.api import CompressorError
from compressor_methods.quantize.rtn import (QuantizedWeight, dequantize, effective_group_size, group_scales,
                                             quantize_with_scale, symmetric_scale)


@dataclass
class PreparedHessian:
    """What GPTQ needs from H, computed once for the linears that share an input (q/k/v, gate/up)."""

    upper: torch.Tensor  # U with H⁻¹ = UᵀU, in processing order, fp32
    perm: torch.Tensor | None  # processing order of the columns (act-order), or None for 0..in-1
    dead: torch.Tensor  # bool [in]: inputs that were always zero


def upper_cholesky_of_inverse(h: torch.Tensor, retries: int = 6) -> torch.Tensor:
    """Return U, the upper Cholesky factor of H⁻¹; adds more dampening if H is not positive definite."""
    extra = torch.diagonal(h).mean().item() * 0.01
    for _ in range(retries):
        lower, info = torch.linalg.cholesky_ex(h)
        if int(info) == 0:
            upper, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(lower), upper=True)
            if int(info) == 0:
                return upper
        h = h.clone()
        h.diagonal().add_(extra)
        extra *= 10
    raise CompressorError("GPTQ: the input Hessian is not positive definite even after extra dampening",
                          hint="use more calibration samples or a larger percdamp")


def prepare_hessian(hessian: torch.Tensor, percdamp: float = 0.01, act_order: bool = False,
                    device: torch.device | None = None) -> PreparedHessian:
    """Dampen H (percdamp · mean diagonal), order its columns (act-order: largest H_jj first) and factor H⁻¹."""
    h = hessian.to(device or hessian.device, torch.float32).clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0  # a dead input carries no signal: any weight there is free, and H stays invertible
    perm = None
    if act_order:
        # quantizing the inputs with the most energy first leaves the most columns to absorb their error
        perm = torch.argsort(torch.diagonal(h), descending=True, stable=True)
        h = h[perm][:, perm]
    h.diagonal().add_(percdamp * torch.diagonal(h).mean())
    return PreparedHessian(upper_cholesky_of_inverse(h), perm, dead)


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, bits: int, group_size: int, blocksize: int = 128,
                  percdamp: float = 0.01, act_order: bool = False, scale_dtype: torch.dtype = torch.bfloat16,
                  prepared: PreparedHessian | None = None) -> QuantizedWeight:
    """Quantize ``weight`` [out, in] given its input Hessian H [in, in] (∝ X Xᵀ); return ints, scales, dequant."""
    w = weight.detach().float().clone()
    rows, cols = w.shape
    g = effective_group_size(cols, group_size)
    if cols % g:
        raise ValueError(f"in_features {cols} is not a multiple of group_size {g}")
    prep = prepared or prepare_hessian(hessian, percdamp, act_order, w.device)
    u = prep.upper.to(w.device)
    w[:, prep.dead.to(w.device)] = 0.0
    if prep.perm is not None:
        # static groups: scales come from the original weights, so the groups stay contiguous in the
        # original column order and the checkpoint needs no g_idx permutation
        scale = group_scales(w, bits, group_size, scale_dtype)
        order = prep.perm.to(w.device)
        w = w[:, order]
    else:
        scale = torch.zeros(rows, cols // g, dtype=torch.float32, device=w.device)
        order = torch.arange(cols, device=w.device)
    columns = order.tolist()
    # work on Wᵀ so that a column of W is a contiguous row: the per-column updates stay in cache on CPU
    wt = w.t().contiguous()
    qt = torch.zeros_like(wt)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w1 = wt[i1:i2].clone()
        u1 = u[i1:i2, i1:i2]
        err1 = torch.zeros_like(w1)
        for i in range(i2 - i1):
            col = columns[i1 + i]
            if prep.perm is None and col % g == 0:
                # lazy scales: from the group's weights as updated by the errors of the columns before it
                ahead = w1[i:i + g]
                if ahead.shape[0] < g:
                    ahead = torch.cat([ahead, wt[i2:i2 + g - ahead.shape[0]]], dim=0)
                scale[:, col // g] = symmetric_scale(ahead.t(), bits, scale_dtype)[:, 0]
            s = scale[:, col // g]
            qcol = quantize_with_scale(w1[i], s, bits)
            err = (w1[i] - qcol * s) / u1[i, i]
            w1[i:].addr_(u1[i, i:], err, alpha=-1.0)
            qt[i1 + i] = qcol
            err1[i] = err
        if i2 < cols:
            wt[i2:].addmm_(u[i1:i2, i2:].t(), err1, alpha=-1.0)
    q = qt.t()
    if prep.perm is not None:
        q = q[:, torch.argsort(order)]
    return QuantizedWeight(q.to(torch.int8), scale, dequantize(q, scale), bits, group_size)


def output_error(weight: torch.Tensor, approx: torch.Tensor, hessian: torch.Tensor) -> float:
    """Relative output error tr(Δ H Δᵀ) / tr(W H Wᵀ), i.e. ‖(W − Ŵ)X‖² / ‖WX‖² for H ∝ X Xᵀ."""
    w = weight.detach().float()
    h = hessian.to(w.device, torch.float32)
    delta = w - approx.to(w.device, torch.float32)
    num = ((delta @ h) * delta).sum()
    den = ((w @ h) * w).sum()
    return float(num / den) if float(den) > 0 else 0.0
