"""Kronecker-factored curvature (KFAC) of every decoder linear, from full-model forward and backward passes.

For a linear with inputs ``a`` and output gradients ``g`` the Fisher block is approximated by
G ⊗ A with A = E[a aᵀ] and G = E[g gᵀ] (empirical Fisher: the true next-token labels).
Gradients are taken of the *summed* token loss, so ``g`` is one token's gradient.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compressor.api import CompressorError, all_reduce_sum_, shard_windows, steps, sum_float, sum_int
from compressor_methods.surgeon.store import FactorStore

# Linears that read the same input tensor as another one: their A factor is shared, not recomputed.
SHARED_INPUT = {"k_proj": "q_proj", "v_proj": "q_proj", "up_proj": "gate_proj"}


@dataclass
class KronFactors:
    """One linear's curvature: input factor A [in, in] and output-gradient factor G [out, out]."""

    a: torch.Tensor
    g: torch.Tensor


@dataclass
class CurvaturePass:
    """The result of one pass over the calibration windows."""

    factors: dict[str, KronFactors]  # qualified linear name -> factors
    loss: float  # mean next-token cross-entropy of the model as it was
    tokens: int


class _Collector:
    """Forward/backward hooks that accumulate A and G sums in fp32 in ``store``."""

    def __init__(self, linears: dict[str, nn.Linear], store: FactorStore) -> None:
        self.linears = linears
        self.store = store
        self.a: dict[str, torch.Tensor] = {}
        self.g: dict[str, torch.Tensor] = {}
        self.collect_inputs = True  # off while checkpointed layers recompute during backward
        self.handles: list[torch.utils.hooks.RemovableHandle] = []

    def _add(self, table: dict[str, torch.Tensor], name: str, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        outer = x.t() @ x
        if name in table:
            table[name] += outer.to(table[name].device)
        else:
            table[name] = self.store.keep(outer)

    def _hook(self, name: str):  # type: ignore[no-untyped-def]
        prefix, short = name.rsplit(".", 1)
        shares = short in SHARED_INPUT and f"{prefix}.{SHARED_INPUT[short]}" in self.linears

        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if self.collect_inputs and not shares:
                self._add(self.a, name, inputs[0].detach())
            if output.requires_grad:
                output.register_hook(lambda grad: self._add(self.g, name, grad.detach()))

        return hook

    def __enter__(self) -> _Collector:
        for name, linear in self.linears.items():
            self.handles.append(linear.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def all_reduce(self) -> None:
        """Sum the A and G sums of every rank (in name order, the same on every rank)."""
        for table in (self.a, self.g):
            for name in sorted(table):
                all_reduce_sum_(table[name])

    def factors(self, tokens: int) -> dict[str, KronFactors]:
        """The mean factors; shared-input linears point at their partner's A."""
        for t in [*self.a.values(), *self.g.values()]:
            t.div_(tokens)  # in place: the sums may be memory-mapped files
        out = {}
        for name in self.linears:
            prefix, short = name.rsplit(".", 1)
            partner = f"{prefix}.{SHARED_INPUT.get(short, short)}"
            a_name = partner if partner in self.linears else name
            if a_name not in self.a or name not in self.g:
                raise CompressorError(f"no curvature was collected for {name}",
                                      hint="the model's forward pass did not reach this linear")
            out[name] = KronFactors(self.a[a_name], self.g[name])
        return out


@contextmanager
def _input_grads(model: nn.Module) -> Iterator[None]:
    """Make the embeddings' output require grad, so gradients reach every linear without weight grads."""
    embed = model.get_input_embeddings()
    handle = embed.register_forward_hook(lambda m, i, o: o.requires_grad_(True))
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def _checkpointing(model: nn.Module, enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    try:
        yield
    finally:
        model.gradient_checkpointing_disable()


def collect_factors(model: nn.Module, linears: dict[str, nn.Linear], windows: np.ndarray, batch_size: int,
                    device: torch.device, store: FactorStore, checkpointing: bool = False) -> CurvaturePass:
    """Run the causal-LM loss forward and backward over ``windows`` and return every linear's KFAC factors."""
    was_training = model.training
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    model.train(checkpointing)  # HF only checkpoints in training mode; these models have no dropout at eval
    total_loss, tokens = 0.0, 0
    collector = _Collector(linears, store)
    try:
        with collector, _input_grads(model), _checkpointing(model, checkpointing), torch.enable_grad():
            share = shard_windows(windows)  # data-parallel: this rank's windows; the sums are added up below
            for start in steps(range(0, len(share), batch_size), "surgeon: curvature batches"):
                ids = torch.as_tensor(np.asarray(share[start:start + batch_size]), dtype=torch.long, device=device)
                collector.collect_inputs = True
                logits = model(ids, use_cache=False).logits
                loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                       ids[:, 1:].reshape(-1), reduction="sum")
                collector.collect_inputs = False
                loss.backward()
                total_loss += float(loss.detach())
                tokens += ids.numel()
                del logits, loss
    finally:
        model.train(was_training)
        for p in params:
            p.requires_grad_(True)
    collector.all_reduce()
    tokens, total_loss = sum_int(tokens), sum_float(total_loss)
    # one scale for every layer, so the global comparison of costs is unaffected by it
    return CurvaturePass(collector.factors(tokens), total_loss / max(tokens - len(windows), 1), tokens)


def balance(f: KronFactors) -> KronFactors:
    """Rescale so that ‖A‖_F = ‖G‖_F; G ⊗ A is unchanged, but the dampening then weighs both alike."""
    na, ng = float(torch.linalg.matrix_norm(f.a)), float(torch.linalg.matrix_norm(f.g))
    if na <= 0 or ng <= 0:
        return f
    c = (ng / na) ** 0.5
    return KronFactors(f.a * c, f.g / c)


def damped_inverse(m: torch.Tensor, damp: float, retries: int = 6) -> torch.Tensor:
    """(M + damp·mean(diag M)·I)⁻¹ in fp32 through Cholesky, raising the dampening if M is singular."""
    m = m.float()
    mean = float(torch.diagonal(m).mean())
    scale = mean if mean > 0 else 1.0
    eye = torch.eye(m.shape[0], dtype=m.dtype, device=m.device)
    for attempt in range(retries):
        d = damp * scale * (10 ** attempt)
        chol, info = torch.linalg.cholesky_ex(m + d * eye)
        if int(info) == 0:
            return torch.cholesky_inverse(chol)
    raise CompressorError("a KFAC factor stayed singular after raising its dampening",
                          hint="raise damp_a / damp_g, or use more calibration samples")
