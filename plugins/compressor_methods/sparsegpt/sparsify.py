"""SparseGPT's pure tensor maths (arXiv 2301.00774): OBS pruning with lazy batched error propagation.

Runs on any device (no CUDA-only calls); all arithmetic in fp32.
"""

from __future__ import annotations

import torch

from compressor.api import CompressorError
from compressor_methods._masks import prune_mask_global, prune_mask_n_m


def damped_hessian(hessian: torch.Tensor, weight: torch.Tensor, percdamp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Copy H and W; give dead inputs (H_jj = 0) a unit diagonal and zero weights; add percdamp·mean(diag H)."""
    h = hessian.to(weight.device, torch.float32).clone()
    w = weight.float().clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h.diagonal().add_(percdamp * torch.diagonal(h).mean())
    return h, w


def upper_cholesky_of_inverse(h: torch.Tensor, retries: int = 6) -> torch.Tensor:
    """Return U, the upper Cholesky factor of H⁻¹; adds more dampening if H is not positive definite."""
    extra = torch.diagonal(h).mean().item() * 0.01
    for _ in range(retries):
        lower, info = torch.linalg.cholesky_ex(h)
        if int(info) == 0:
            inv = torch.cholesky_inverse(lower)
            upper, info = torch.linalg.cholesky_ex(inv, upper=True)
            if int(info) == 0:
                return upper
        h = h.clone()
        h.diagonal().add_(extra)
        extra *= 10
    raise CompressorError("SparseGPT: the input Hessian is not positive definite even after extra dampening",
                          hint="use more calibration samples or a larger percdamp")


def sparsegpt_prune(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float,
                    n_m: tuple[int, int] | None = None, blocksize: int = 128, percdamp: float = 0.01,
                    upper: torch.Tensor | None = None) -> torch.Tensor:
    """Return a pruned copy of ``weight`` [out, in] whose remaining weights compensate the pruned ones."""
    h, w = damped_hessian(hessian, weight, percdamp)
    u = upper if upper is not None else upper_cholesky_of_inverse(h)
    del h
    rows, cols = w.shape
    if n_m is not None and blocksize % n_m[1]:
        blocksize -= blocksize % n_m[1]
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w1 = w[:, i1:i2].clone()
        u1 = u[i1:i2, i1:i2]
        d1 = torch.diagonal(u1)
        err1 = torch.zeros_like(w1)
        if n_m is None:
            # adaptive mask: from the current (already updated) weights of the whole block
            mask1 = prune_mask_global(w1.pow(2) / d1.pow(2).unsqueeze(0), sparsity)
        else:
            mask1 = torch.zeros_like(w1, dtype=torch.bool)
        count = i2 - i1
        if n_m is None:
            scale = mask1 / d1.unsqueeze(0)  # err = (w - q)/d = w·mask/d, precomputed per block
        for i in range(count):
            if n_m is not None and i % n_m[1] == 0:
                j = i + n_m[1]
                mask1[:, i:j] = prune_mask_n_m(w1[:, i:j].pow(2) / d1[i:j].pow(2).unsqueeze(0), *n_m)
                scale_nm = mask1[:, i:j] / d1[i:j].unsqueeze(0)
            err = torch.mul(w1[:, i], scale[:, i] if n_m is None else scale_nm[:, i % n_m[1]], out=err1[:, i])
            if i + 1 < count:
                w1[:, i + 1:].addr_(err, u1[i, i + 1:], alpha=-1.0)
        w1.masked_fill_(mask1, 0.0)  # exact zeros (w - (w/d)·d may leave rounding residue)
        w[:, i1:i2] = w1
        if i2 < cols:
            w[:, i2:].addmm_(err1, u[i1:i2, i2:], alpha=-1.0)
    return w
