"""``streamline``: LLM-Streamline, replace the least important consecutive block with one trained layer."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from compressor.api import (DataError, Kind, LayerSimilarity, Method, ModelHandle, StageContext, capture_block_io,
                            layer_parameters, loss_curve, measure_similarity)

from .amount import DepthAmount, check_target, fixed_count, smallest_count_reaching
from .replacement import TrainSettings, make_replacement, train_replacement
from .selection import argmax_start

ATTENTION_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj")


class StreamlineOptions(DepthAmount):
    """Options of ``streamline``; the amount counts layers removed NET (k+1 layers become one)."""

    replacement: Literal["layer", "ffn"] = Field(
        "layer",
        description="layer: one stock decoder layer (initialised from the block's first layer), exportable as a "
                    "normal Llama; ffn: the same layer without attention, which stock Llama cannot express: "
                    "it needs a runtime with per-layer attention/no-attention support (exporters refuse it).")
    epochs: int = Field(8, ge=0, le=1000, description="Training epochs over the calibration windows (0: no "
                                                     "training, i.e. plain removal of the block's later layers).")
    lr: float = Field(3e-4, gt=0.0, le=1.0, description="AdamW peak learning rate (cosine decay to min_lr).")
    min_lr: float = Field(3e-5, ge=0.0, le=1.0, description="Learning rate at the end of the cosine schedule.")
    weight_decay: float = Field(1e-3, ge=0.0, le=1.0, description="AdamW weight decay.")
    train_batch_size: int = Field(2, ge=1, description="Calibration windows per optimiser step.")
    grad_clip: float = Field(5.0, gt=0.0, description="Gradient-norm clipping threshold.")
    val_fraction: float = Field(0.125, gt=0.0, lt=1.0,
                                description="Share of the calibration windows held out for validation MSE "
                                            "(at least one window); the best epoch on it is kept.")
    batch_size: int = Field(4, ge=1, description="Calibration windows per forward pass when capturing states.")


def replacement_parameters(model: ModelHandle, index: int, kind: str) -> int:
    """Parameters of the replacement built from layer ``index``."""
    size = layer_parameters(model, index)
    if kind == "ffn":
        size -= sum(m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
                    for n, m in model.linears(index).items() if n in ATTENTION_NAMES)
    return size


def select_block(sim: LayerSimilarity, removed: int) -> int:
    """The start j of the block j..j+removed (removed+1 layers) whose input and output are most similar."""
    return argmax_start(sim.block_similarity(removed + 1))


def _check_windows(windows: np.ndarray) -> None:
    if windows.shape[0] < 2:
        raise DataError(f"streamline needs at least 2 calibration windows (training and validation), got "
                        f"{windows.shape[0]}", hint="raise data.calibration.samples")


class Streamline(Method):
    """Depth pruning with a trained lightweight replacement (LLM-Streamline, MSE variant)."""

    name = "streamline"
    stage = "prune"
    summary = "Replace the most redundant consecutive block with one decoder layer trained on calibration states"
    Options = StreamlineOptions

    def conformance_options(self) -> list[dict[str, Any]]:
        """One layer off the conformance kit's 4-layer models, one training epoch."""
        return [{"layers": 1, "epochs": 1}]

    def needs_calibration(self, options: Any) -> bool:
        """Selection and training both use calibration activations."""
        return True

    def kinds(self, options: Any) -> frozenset[Kind]:
        """Fewer layers; an FFN-only replacement also makes the layers non-uniform."""
        if getattr(options, "replacement", "layer") == "ffn":
            return frozenset({Kind.DEPTH, Kind.NONUNIFORM})
        return frozenset({Kind.DEPTH})

    def apply(self, model: ModelHandle, options: StreamlineOptions, ctx: StageContext) -> dict[str, Any]:
        """Pick the block, train its replacement on the calibration windows and splice it in."""
        windows = np.asarray(ctx.calibration_ids())
        _check_windows(windows)
        fixed_count(options, model.num_layers)  # refuse an impossible amount before the calibration pass
        sim = measure_similarity(model, windows, options.batch_size)
        return replace_block(model, options, ctx, windows, sim)


def replace_block(model: ModelHandle, options: StreamlineOptions, ctx: StageContext, windows: np.ndarray,
                  sim: LayerSimilarity) -> dict[str, Any]:
    """Streamline given the model's measured similarities: select, capture, train, splice; return details."""
    _check_windows(windows)
    before_layers, before_params = model.num_layers, model.num_parameters()
    # removing n layers net means replacing n+1 layers, so at most num_layers-1 may go
    count = fixed_count(options, before_layers)
    if count is None:
        needed = check_target(options, before_params)

        def freed(n: int) -> int:
            j = select_block(sim, n)
            return (sum(layer_parameters(model, i) for i in range(j, j + n + 1))
                    - replacement_parameters(model, j, options.replacement))

        count = smallest_count_reaching(needed, freed, before_layers - 1, before_params,
                                        options.target_params or 0)
    start = select_block(sim, count)
    stop = start + count + 1
    ctx.log(f"streamline: replacing layers {start}..{stop - 1} with one {options.replacement} "
            f"(cosine {sim.block_similarity(count + 1)[start]:.4f})")

    io = capture_block_io(model, windows, start, stop, options.batch_size)
    gen = torch.Generator().manual_seed(ctx.seed)
    perm = torch.randperm(windows.shape[0], generator=gen)
    n_val = max(1, int(round(options.val_fraction * windows.shape[0])))
    val_idx, train_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
    device = next(model.model.parameters()).device
    dtype = next(model.model.parameters()).dtype
    settings = TrainSettings(options.lr, min(options.min_lr, options.lr), options.weight_decay, options.epochs,
                             options.train_batch_size, options.grad_clip, ctx.seed)
    torch.manual_seed(ctx.seed)
    result = train_replacement(make_replacement(model.layers[start], options.replacement), io, train_idx,
                               val_idx, settings, device, ctx.log)
    model.layers[start] = result.layer.to(device=device, dtype=dtype)
    model.drop_layers(list(range(start + 1, stop)))
    model.sync_config()
    return {"replacement": options.replacement, "amount": options.describe_amount(),
            "replaced_block": list(range(start, stop)), "replacement_index": start,
            "removed_layers": list(range(start + 1, stop)),
            "layers_before": before_layers, "layers_after": model.num_layers,
            "parameters_before": before_params, "parameters_after": model.num_parameters(),
            "block_cosine": [round(float(v), 6) for v in sim.block_similarity(count + 1)],
            "calibration": {"windows": int(windows.shape[0]), "tokens_per_window": int(windows.shape[1]),
                            "train_windows": [int(i) for i in train_idx], "val_windows": [int(i) for i in val_idx]},
            "training": {"epochs": options.epochs, "lr": options.lr, "min_lr": settings.min_lr,
                         "weight_decay": options.weight_decay, "batch_size": options.train_batch_size,
                         "history": result.history, "val_mse_skip_block": result.val_mse_skip,
                         "val_mse_init": result.val_mse_init, "val_mse_best": result.val_mse_best,
                         "best_epoch": result.best_epoch},
            "loss_curves": [loss_curve("replacement training", "epoch", "MSE to the block's output",
                                       [h["epoch"] for h in result.history],
                                       train=[h["train_mse"] for h in result.history],
                                       validation=[h["val_mse"] for h in result.history])]}
