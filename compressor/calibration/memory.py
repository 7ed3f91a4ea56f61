"""Estimating the peak memory of a calibration run and refusing runs that clearly cannot fit."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from compressor.calibration.statistics import statistic_bytes
from compressor.errors import ResourceError


@dataclass
class MemoryEstimate:
    """Bytes a run needs on the compute device, by part."""

    weights: int
    activations: int
    statistics: int
    workspace: int
    device: str
    available: int | None

    @property
    def total(self) -> int:
        """Sum of the parts."""
        return self.weights + self.activations + self.statistics + self.workspace

    def describe(self) -> str:
        """One line for the log."""
        gib = 2**30
        avail = "unknown" if self.available is None else f"{self.available / gib:.2f} GiB"
        return (f"calibration memory estimate on {self.device}: {self.total / gib:.2f} GiB "
                f"(weights {self.weights / gib:.2f}, activations {self.activations / gib:.2f}, "
                f"statistics {self.statistics / gib:.2f}, workspace {self.workspace / gib:.2f}); available {avail}")


def available_bytes(device: torch.device) -> int | None:
    """Free memory on ``device``: CUDA free memory, or the host's available RAM."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "cpu":
        from compressor.offload_mode import available_ram

        return available_ram()
    return None


def _module_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def estimate(model: nn.Module, layer: nn.Module, samples: int, seqlen: int, batch_size: int,
             act_itemsize: int, statistics: Iterable[str], offload: bool, weights_in_ram: bool,
             device: torch.device) -> MemoryEstimate:
    """Estimate the peak of a layer-sequential run of ``samples`` windows of ``seqlen`` tokens."""
    cfg = model.config
    hidden = int(cfg.hidden_size)
    heads = int(cfg.num_attention_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or hidden // heads)
    ffn = int(cfg.intermediate_size)
    tokens = samples * seqlen
    layer_bytes = max(_module_bytes(layer), 4 * (3 * hidden * ffn + 4 * hidden * heads * head_dim))
    if offload or (device.type == "cpu" and weights_in_ram):
        # the model's other weights are either elsewhere or already counted as in use
        weights = 2 * layer_bytes
    else:
        weights = sum(p.numel() * p.element_size() for p in model.parameters()) + layer_bytes
    # the hidden states plus the widest stored intermediate (the MLP's inner activations)
    activations = tokens * (hidden + max(ffn, heads * head_dim)) * act_itemsize
    stats = 0
    for name in statistics:
        for width in (hidden, heads * head_dim, hidden, ffn):
            stats += statistic_bytes(name, width)
    # one batch's transient tensors: gate/up/act products and attention scores
    workspace = batch_size * seqlen * (4 * ffn + 4 * hidden) * 4 + batch_size * heads * seqlen * seqlen * 4
    workspace += 4 * max(hidden, ffn) ** 2  # a method's own working copies (inverse Hessian)
    return MemoryEstimate(weights, activations, stats, workspace, str(device), available_bytes(device))


def check_fits(est: MemoryEstimate) -> None:
    """Raise :class:`ResourceError` when the estimate clearly exceeds the free memory."""
    if est.available is not None and est.total > est.available:
        gib = 2**30
        raise ResourceError(
            f"calibration needs about {est.total / gib:.2f} GiB on {est.device} "
            f"but only {est.available / gib:.2f} GiB is free",
            hint="use fewer calibration samples (nsamples), shorter sequences (seqlen), "
                 "a smaller batch_size, or offload: true")
