"""LLM-Streamline's lightweight replacement: one decoder layer trained to map a block's input to its output."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from compressor.api import BlockIO, steps


class NoAttention(nn.Module):
    """Stands in for a removed self-attention: contributes nothing to the residual stream.

    A decoder layer holding this has no q/k/v/o projections, so ``ModelHandle.layer_spec``
    reports ``num_heads == 0``; stock Llama cannot express such a layer, and ``save_hf``
    refuses the model as non-uniform, which is how exporters learn they cannot write it.
    """

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
        """Return zeros shaped like the input (and no attention weights)."""
        return torch.zeros_like(hidden_states), None


def make_replacement(layer: nn.Module, kind: str) -> nn.Module:
    """A float32 copy of ``layer`` to train; for ``ffn`` its attention is removed."""
    new = copy.deepcopy(layer).float()
    if kind == "ffn":
        new.self_attn = NoAttention()
    return new


@dataclass
class TrainSettings:
    """Optimiser settings of the replacement's MSE training."""

    lr: float
    min_lr: float
    weight_decay: float
    epochs: int
    batch_size: int
    grad_clip: float
    seed: int


@dataclass
class TrainResult:
    """The trained replacement and its loss curve."""

    layer: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)
    val_mse_skip: float = 0.0
    val_mse_init: float = 0.0
    val_mse_best: float = 0.0
    best_epoch: int = 0


def _float_kwargs(kwargs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    def conv(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return v.to(device=device, dtype=torch.float32 if v.is_floating_point() else v.dtype)
        if isinstance(v, tuple):
            return tuple(conv(x) for x in v)
        return v
    return {k: conv(v) for k, v in kwargs.items()}


def _call(layer: nn.Module, hidden: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    out = layer(hidden, **kwargs)
    return out if isinstance(out, torch.Tensor) else out[0]


@torch.no_grad()
def _mse(layer: nn.Module | None, x: torch.Tensor, y: torch.Tensor, kwargs: dict[str, Any], batch_size: int,
         device: torch.device) -> float:
    """Mean squared error of ``layer`` (None: the identity, i.e. skipping the block) over all elements."""
    total, count = 0.0, 0
    for s in range(0, x.shape[0], batch_size):
        xb, yb = x[s:s + batch_size].to(device), y[s:s + batch_size].to(device)
        pred = xb if layer is None else _call(layer, xb, kwargs)
        total += float((pred - yb).double().pow(2).sum())
        count += yb.numel()
    return total / max(count, 1)


def train_replacement(layer: nn.Module, io: BlockIO, train_idx: torch.Tensor, val_idx: torch.Tensor,
                      settings: TrainSettings, device: torch.device, log: Any = print) -> TrainResult:
    """Train ``layer`` (float32) with AdamW on MSE(layer(x_in), x_out); keep the epoch with the best validation MSE."""
    kwargs = _float_kwargs(io.layer_kwargs, device)
    layer = layer.to(device).float()
    x_tr, y_tr = io.inputs[train_idx], io.outputs[train_idx]
    x_va, y_va = io.inputs[val_idx], io.outputs[val_idx]
    result = TrainResult(layer)
    layer.eval()
    result.val_mse_skip = _mse(None, x_va, y_va, kwargs, settings.batch_size, device)
    result.val_mse_init = _mse(layer, x_va, y_va, kwargs, settings.batch_size, device)
    best_state = copy.deepcopy(layer.state_dict())
    result.val_mse_best, result.best_epoch = result.val_mse_init, 0

    for p in layer.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(layer.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    steps_per_epoch = math.ceil(x_tr.shape[0] / settings.batch_size)
    total_steps = max(1, steps_per_epoch * settings.epochs)
    gen = torch.Generator().manual_seed(settings.seed)
    step = 0
    for epoch in steps(range(1, settings.epochs + 1), "streamline: epochs"):
        layer.train()
        order = torch.randperm(x_tr.shape[0], generator=gen)
        seen, loss_sum = 0, 0.0
        for s in range(0, len(order), settings.batch_size):
            # cosine decay from lr to min_lr over every optimiser step of the run
            lr = settings.min_lr + 0.5 * (settings.lr - settings.min_lr) * (1 + math.cos(math.pi * step / total_steps))
            for group in opt.param_groups:
                group["lr"] = lr
            idx = order[s:s + settings.batch_size]
            xb, yb = x_tr[idx].to(device), y_tr[idx].to(device)
            with torch.enable_grad():
                loss = nn.functional.mse_loss(_call(layer, xb, kwargs), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
            torch.nn.utils.clip_grad_norm_(layer.parameters(), settings.grad_clip)
            opt.step()
            step += 1
            loss_sum += float(loss.detach()) * len(idx)
            seen += len(idx)
        layer.eval()
        val = _mse(layer, x_va, y_va, kwargs, settings.batch_size, device)
        result.history.append({"epoch": epoch, "train_mse": loss_sum / max(seen, 1), "val_mse": val})
        log(f"streamline epoch {epoch}/{settings.epochs}: train MSE {loss_sum / max(seen, 1):.5g}, "
            f"val MSE {val:.5g} (skipping the block: {result.val_mse_skip:.5g})")
        if val < result.val_mse_best:
            result.val_mse_best, result.best_epoch = val, epoch
            best_state = copy.deepcopy(layer.state_dict())
    layer.load_state_dict(best_state)
    for p in layer.parameters():
        p.requires_grad_(False)
    return result
