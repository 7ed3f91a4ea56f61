"""Catching the hidden states (and keyword arguments) that enter decoder layer 0."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from compressor.calibration.offload import is_offloaded, store_of, stored_embedding


class _StopForward(Exception):
    """Raised by the layer-0 hook: everything after the embeddings is the engine's job."""


def _move_small(module: nn.Module, device: torch.device) -> torch.device:
    home = next((p.device for p in module.parameters()), None) or next((b.device for b in module.buffers()), device)
    module.to(device)
    return home


@torch.no_grad()
def capture_layer_inputs(model: nn.Module, ids: torch.Tensor, batch_size: int, device: torch.device,
                         dtype: torch.dtype) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """Return, per batch of windows, layer 0's input hidden states (on ``device``, in ``dtype``) and kwargs."""
    inner = model.model
    embed = inner.embed_tokens
    store = store_of(model)
    from_store = store is not None and is_offloaded(embed)
    # an offloaded embedding table is never read whole: each lookup reads only its rows
    embed_home = torch.device("meta") if from_store else _move_small(embed, device)
    rotary_home = _move_small(inner.rotary_emb, device)

    caught: dict[str, Any] = {}

    def hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        caught["h"] = args[0] if args else kwargs["hidden_states"]
        caught["kw"] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        raise _StopForward

    handle = inner.layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    hs: list[torch.Tensor] = []
    kws: list[dict[str, Any]] = []
    try:
        with stored_embedding(model, device, dtype):
            for start in range(0, ids.shape[0], batch_size):
                batch = ids[start:start + batch_size].to(device)
                try:
                    inner(input_ids=batch, use_cache=False)
                except _StopForward:
                    pass
                hs.append(caught["h"].to(dtype))
                kws.append(caught["kw"])
    finally:
        handle.remove()
        if not from_store:
            embed.to(embed_home)
        inner.rotary_emb.to(rotary_home)
    # position embeddings must stay on the compute device with the activations
    for kw in kws:
        pe = kw.get("position_embeddings")
        if isinstance(pe, tuple):
            kw["position_embeddings"] = tuple(t.to(device) for t in pe)
    return hs, kws
