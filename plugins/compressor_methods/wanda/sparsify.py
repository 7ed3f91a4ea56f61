"""Wanda's pure tensor maths: scores |W_ij|·‖X_j‖₂ compared within each output row (arXiv 2306.11695)."""

from __future__ import annotations

import torch

from compressor_methods._masks import prune_mask_cumulative, prune_mask_n_m, prune_mask_per_row


def wanda_scores(weight: torch.Tensor, input_sq_norm: torch.Tensor) -> torch.Tensor:
    """|W| scaled by the input channel norms ‖X_j‖₂ (from the mean of x_j²)."""
    return weight.abs() * input_sq_norm.to(weight.device, torch.float32).sqrt().unsqueeze(0)


def wanda_prune(weight: torch.Tensor, input_sq_norm: torch.Tensor, sparsity: float,
                n_m: tuple[int, int] | None = None, variant: bool = False) -> torch.Tensor:
    """Return ``weight`` with Wanda's lowest-scoring weights zeroed (per row, N:M, or the α-search variant)."""
    scores = wanda_scores(weight.float(), input_sq_norm)
    if n_m is not None:
        mask = prune_mask_n_m(scores, *n_m)
    elif variant:
        mask = prune_mask_cumulative(scores, sparsity)
    else:
        mask = prune_mask_per_row(scores, sparsity)
    return weight.masked_fill(mask, 0)


def wanda_column_scores(weight: torch.Tensor, input_sq_norm: torch.Tensor) -> torch.Tensor:
    """Per input column (an MLP neuron or a head dimension): the sum of its Wanda scores."""
    return wanda_scores(weight.float(), input_sq_norm).sum(0)
