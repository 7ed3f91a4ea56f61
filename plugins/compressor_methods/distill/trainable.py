"""Which of the student's parameters a heal run trains, and LoRA adapters through peft."""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

from compressor.api import UsageError


def select_parameters(model: nn.Module, what: str) -> list[nn.Parameter]:
    """Unfreeze the parameters ``what`` names (all, mlp, norms), freeze the rest, and return the trained ones."""
    chosen = []
    for name, p in model.named_parameters():
        take = what == "all" or (what == "mlp" and ".mlp." in name) or (what == "norms" and "norm" in name.lower())
        p.requires_grad_(take)
        if take:
            chosen.append(p)
    if not chosen:
        raise UsageError(f"train: {what} selects no parameter of this model",
                         hint="use train: all, or lora")
    return chosen


def lora_targets(model: nn.Module) -> list[str]:
    """The names (last component) of every Linear inside the decoder layers: LoRA adapts all of them."""
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules()
             if isinstance(m, nn.Linear) and ".layers." in f".{n}"}
    return sorted(names)


def attach_lora(model: nn.Module, rank: int, alpha: float, seed: int) -> Any:
    """Wrap ``model`` with peft LoRA adapters on its decoder Linears; only the adapters train."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as exc:
        raise UsageError("train: lora needs the package peft, which is not installed",
                         hint="pip install peft  (make setup installs it)") from exc
    torch.manual_seed(seed)  # the adapters' random initialisation
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, bias="none", target_modules=lora_targets(model))
    return get_peft_model(model, config)


def merge_lora(peft_model: Any) -> nn.Module:
    """Fold the adapters into their base weights and return the plain model, with the student's original layout."""
    return peft_model.merge_and_unload()


def frozen_digest(model: nn.Module) -> str:
    """SHA-256 of every parameter that is not a LoRA adapter (names without peft's wrapping), in name order."""
    h = hashlib.sha256()
    for name, p in sorted(_base_parameters(model)):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _base_parameters(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    out = []
    for name, p in model.named_parameters():
        if "lora_" in name:
            continue
        # peft wraps the model (base_model.model.) and each adapted Linear (.base_layer.)
        out.append((name.removeprefix("base_model.model.").replace(".base_layer.", "."), p))
    return out
