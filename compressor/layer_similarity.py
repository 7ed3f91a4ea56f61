"""How much each decoder layer changes the residual stream: Block Influence, angular distance, cosine.

The hidden states are captured with forward hooks on the decoder layers, so every boundary is
the RAW residual stream (HF's ``output_hidden_states`` applies the final norm to its last entry,
which would make the last layer look important for the wrong reason). Boundary ``b`` is the
hidden state entering layer ``b``; boundary ``num_layers`` is the one leaving the last layer.
Statistics are accumulated in float64 from float32 copies, batch by batch, so nothing of size
[windows, tokens, hidden] is kept for the whole calibration set.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from compressor.model import ModelHandle


@dataclass
class LayerSimilarity:
    """Pairwise similarity of every two layer boundaries, averaged over calibration data.

    Matrices are [K, K] with K = num_layers + 1 boundaries; entry [i, j] (i < j) compares the
    hidden state entering layer i with the one leaving layer j - 1. ``*_all`` average over every
    token; ``*_last`` over the last token of each window. ``angle`` is arccos(cos)/π averaged
    per token (the mean of the angle, not the angle of the mean cosine).
    """

    num_layers: int
    samples: int
    tokens: int
    cos_all: np.ndarray
    angle_all: np.ndarray
    cos_last: np.ndarray
    angle_last: np.ndarray

    def block_influence(self) -> np.ndarray:
        """ShortGPT BI per layer: 1 − mean cosine between the layer's input and output."""
        k = np.arange(self.num_layers)
        return 1.0 - self.cos_all[k, k + 1]

    def cosine_next(self) -> np.ndarray:
        """Mean cosine similarity between each layer's input and output (over all tokens)."""
        k = np.arange(self.num_layers)
        return self.cos_all[k, k + 1].copy()

    def angular_distance(self, n: int, all_tokens: bool = False) -> np.ndarray:
        """Gromov d(l, n) for every start l in 0..num_layers−n: mean arccos(cos(x_l, x_{l+n}))/π."""
        _check_span(n, self.num_layers)
        angle = self.angle_all if all_tokens else self.angle_last
        starts = np.arange(self.num_layers - n + 1)
        return angle[starts, starts + n].copy()

    def block_similarity(self, span: int) -> np.ndarray:
        """LLM-Streamline: mean cosine over tokens between x_j and x_{j+span}, for j in 0..num_layers−span."""
        _check_span(span, self.num_layers)
        starts = np.arange(self.num_layers - span + 1)
        return self.cos_all[starts, starts + span].copy()


def _check_span(n: int, num_layers: int) -> None:
    if not 1 <= n <= num_layers:
        raise ValueError(f"a block of {n} layers does not fit in a {num_layers}-layer model")


def _first_tensor(value: Any) -> torch.Tensor:
    """A decoder layer returns a tensor (transformers 5) or a tuple whose first item is one (4.x)."""
    return value if isinstance(value, torch.Tensor) else value[0]


class _StopForward(Exception):
    """Raised from a hook to skip the layers after the last one we need."""


@contextmanager
def _boundary_hooks(layers: nn.ModuleList, store: dict[int, torch.Tensor], wanted: set[int],
                    stop_after: int | None = None) -> Iterator[dict[str, Any]]:
    """Record the wanted boundaries into ``store``; optionally stop the forward after layer ``stop_after``."""
    handles = []
    kwargs_seen: dict[str, Any] = {}

    def pre_hook(index: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            if index in wanted:
                store[index] = hidden.detach()
            if index == min(wanted) and not kwargs_seen:
                # what the model passes to a layer (mask, rotary embeddings): lets a caller run a layer alone
                kwargs_seen.update({k: v for k, v in kwargs.items() if k != "hidden_states"})
        return hook

    def post_hook(index: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            if index + 1 in wanted:
                store[index + 1] = _first_tensor(output).detach()
            if stop_after is not None and index == stop_after:
                raise _StopForward
        return hook

    try:
        for i, layer in enumerate(layers):
            handles.append(layer.register_forward_pre_hook(pre_hook(i), with_kwargs=True))
            handles.append(layer.register_forward_hook(post_hook(i), with_kwargs=True))
        yield kwargs_seen
    finally:
        for h in handles:
            h.remove()


def _device(model: ModelHandle) -> torch.device:
    device = next(model.model.parameters()).device
    return torch.device("cpu") if device.type == "meta" else device


def _run(model: ModelHandle, batch: torch.Tensor) -> None:
    from compressor.calibration.offload import streamed_forward

    try:
        with streamed_forward(model.model):  # a model whose layers live on disk reads each as it runs
            model.model.model(batch.to(_device(model)), use_cache=False)  # the decoder only: no LM head needed
    except _StopForward:
        pass


def _batches(windows: np.ndarray | torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    data = torch.as_tensor(np.asarray(windows), dtype=torch.long)
    if data.ndim != 2 or data.shape[0] == 0 or data.shape[1] < 1:
        raise ValueError(f"expected token windows of shape [N, L] with N ≥ 1, got {tuple(data.shape)}")
    for start in range(0, data.shape[0], batch_size):
        yield data[start:start + batch_size]


@torch.no_grad()
def measure_similarity(model: ModelHandle, windows: np.ndarray, batch_size: int = 4) -> LayerSimilarity:
    """Run the calibration windows through the model once and return every boundary-pair similarity."""
    from compressor.calibration.offload import is_offloaded

    layers = model.layers
    k = len(layers) + 1
    if any(is_offloaded(layer) for layer in layers):
        # every boundary's states of a batch are held at once: with the layers on disk (a model bigger
        # than RAM) one window at a time keeps them small, at the cost of reading the layers once per window
        batch_size = 1
    sums = {name: np.zeros((k, k), dtype=np.float64) for name in ("cos_all", "angle_all", "cos_last", "angle_last")}
    samples = tokens = 0
    was_training = model.model.training
    model.model.eval()
    try:
        for batch in _batches(windows, batch_size):
            store: dict[int, torch.Tensor] = {}
            with _boundary_hooks(layers, store, set(range(k))):
                _run(model, batch)
            # unit vectors of every boundary, float32 [B, T, H] each; one pair at a time, so that the
            # working memory is the boundaries themselves (a [K, K, B, T, H] product would be far larger)
            unit = [nn.functional.normalize(store.pop(b).float(), dim=-1, eps=1e-12) for b in range(k)]
            for i in range(k - 1):
                for j in range(i + 1, k):
                    cos = (unit[i] * unit[j]).sum(-1).clamp_(-1.0, 1.0)  # [B, T]
                    angle = torch.arccos(cos) / math.pi
                    sums["cos_all"][i, j] += cos.double().sum().item()
                    sums["angle_all"][i, j] += angle.double().sum().item()
                    sums["cos_last"][i, j] += cos[:, -1].double().sum().item()
                    sums["angle_last"][i, j] += angle[:, -1].double().sum().item()
            del unit
            samples += batch.shape[0]
            tokens += batch.numel()
    finally:
        model.model.train(was_training)
    mats = {}
    for name, total in sums.items():
        mean = total / (tokens if name.endswith("_all") else samples)
        mean = np.triu(mean, 1)
        mean = mean + mean.T  # symmetric, diagonal: cos 1 / angle 0
        np.fill_diagonal(mean, 1.0 if name.startswith("cos") else 0.0)
        mats[name] = mean
    return LayerSimilarity(len(layers), samples, tokens, **mats)


@dataclass
class BlockIO:
    """Hidden states entering layer ``start`` and leaving layer ``stop − 1``, float32 on the CPU."""

    start: int
    stop: int
    inputs: torch.Tensor  # [N, T, H]
    outputs: torch.Tensor  # [N, T, H]
    layer_kwargs: dict[str, Any]  # what the model passed to layer ``start`` for a batch of one window


@torch.no_grad()
def capture_block_io(model: ModelHandle, windows: np.ndarray, start: int, stop: int,
                     batch_size: int = 4) -> BlockIO:
    """Capture the raw residual stream around layers start..stop−1 for every window (stops the forward early)."""
    if not 0 <= start < stop <= model.num_layers:
        raise ValueError(f"block {start}..{stop - 1} is outside layers 0..{model.num_layers - 1}")
    ins, outs = [], []
    was_training = model.model.training
    model.model.eval()
    try:
        for batch in _batches(windows, batch_size):
            store: dict[int, torch.Tensor] = {}
            with _boundary_hooks(model.layers, store, {start, stop}, stop_after=stop - 1):
                _run(model, batch)
            ins.append(store[start].float().cpu())
            outs.append(store[stop].float().cpu())
        # the layer's keyword arguments for ONE window: they broadcast over any batch size
        store = {}
        first = torch.as_tensor(np.asarray(windows[:1]), dtype=torch.long)
        with _boundary_hooks(model.layers, store, {start, stop}, stop_after=start) as seen:
            _run(model, first)
            layer_kwargs = dict(seen)
    finally:
        model.model.train(was_training)
    return BlockIO(start, stop, torch.cat(ins), torch.cat(outs), layer_kwargs)


def layer_parameters(model: ModelHandle, index: int) -> int:
    """Number of parameters in decoder layer ``index``."""
    return int(sum(p.numel() for p in model.layers[index].parameters()))


__all__ = ["BlockIO", "LayerSimilarity", "capture_block_io", "layer_parameters", "measure_similarity"]
