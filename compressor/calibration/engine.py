"""The layer-sequential calibration engine shared by every calibration-based method.

Calibration windows are embedded once; then each decoder layer in turn receives the
hidden states produced by the already-compressed layers before it, statistics of the
inputs of its linears are accumulated, the method compresses it, and its outputs become
the next layer's inputs. With ``true_sequential`` the linears are compressed group by
group (q/k/v → o → gate/up → down), each group seeing inputs produced by the groups
already compressed; the engine gets this from a single pass by keeping the intermediate
activations, instead of one fresh forward pass per group.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from compressor.calibration.capture import capture_layer_inputs
from compressor.calibration.memory import MemoryEstimate, check_fits, estimate
from compressor.calibration.offload import is_offloaded, layer_prefix, store_of
from compressor.progress import steps
from compressor.calibration.statistics import BUILTIN_STATISTICS, Statistic, StatisticFactory, reduce_statistic
from compressor import distributed
from compressor.errors import UnsupportedModelError, UsageError

# Linears grouped by the tensor they read: the order in which true-sequential compresses them.
GROUPS: tuple[tuple[str, ...], ...] = (("q_proj", "k_proj", "v_proj"), ("o_proj",), ("gate_proj", "up_proj"),
                                       ("down_proj",))
ALL_LINEARS: tuple[str, ...] = tuple(n for g in GROUPS for n in g)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class CalibrationConfig:
    """How the engine runs: where, in which activation dtype, and how sequentially."""

    device: str = "cpu"
    dtype: str = "float32"  # dtype of the activations flowing through the layers
    true_sequential: bool = False
    offload: bool = False  # keep the model where it lives; only the current layer goes to ``device``
    batch_size: int = 4
    check_memory: bool = True
    log: Callable[[str], None] = print


@dataclass
class LayerStep:
    """One compression step: some linears of one layer, with their input statistics."""

    index: int
    layer: nn.Module
    names: tuple[str, ...]  # the short names compressed now (q_proj … down_proj)
    linears: dict[str, nn.Linear]  # every linear of the layer, by short name
    stats: dict[str, dict[str, torch.Tensor]]  # short name -> statistic name -> value (read-only)
    qualified: dict[str, str]  # short name -> name in the model, e.g. "layers.3.mlp.down_proj"
    device: torch.device


class LayerCompressor:
    """What a method plugs into the engine: the statistics it needs and a compress step."""

    def statistics(self) -> Mapping[str, StatisticFactory | None]:
        """Statistic name -> factory (None means a built-in: ``input_sq_norm`` or ``hessian``)."""
        return {}

    def wants(self, index: int, name: str) -> bool:
        """Whether linear ``name`` of layer ``index`` is compressed (statistics are skipped otherwise)."""
        return True

    def compress(self, step: LayerStep) -> None:
        """Compress ``step.names`` of ``step.layer`` in place (may replace modules to shrink them)."""
        raise NotImplementedError


@dataclass
class CalibrationReport:
    """What the engine did, for the stage report."""

    samples: int
    seqlen: int
    layers: int
    seconds: float
    estimated_peak_bytes: int
    true_sequential: bool
    device: str
    dtype: str
    ranks: int = 1
    layer_seconds: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable view."""
        return {"samples": self.samples, "seqlen": self.seqlen, "layers": self.layers,
                "seconds": round(self.seconds, 3), "estimated_peak_mb": round(self.estimated_peak_bytes / 2**20, 1),
                "true_sequential": self.true_sequential, "device": self.device, "dtype": self.dtype,
                "ranks": self.ranks}


@contextlib.contextmanager
def _swapped(parent: nn.Module, attr: str, replacement: nn.Module) -> Iterator[None]:
    original = getattr(parent, attr)
    setattr(parent, attr, replacement)
    try:
        yield
    finally:
        setattr(parent, attr, original)


def _check_layer(layer: nn.Module) -> None:
    for attr in ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp"):
        if not hasattr(layer, attr):
            raise UnsupportedModelError(f"decoder layer {type(layer).__name__} has no {attr!r}",
                                        hint="calibration supports Llama-family decoder layers")


def _linears(layer: nn.Module) -> tuple[dict[str, nn.Linear], dict[str, str]]:
    found, paths = {}, {}
    for name, module in layer.named_modules():
        short = name.rsplit(".", 1)[-1]
        if isinstance(module, nn.Linear) and short in ALL_LINEARS:
            found[short], paths[short] = module, name
    return found, paths


class _LayerRunner:
    """Runs one Llama-style decoder layer piece by piece so inputs of each linear group are visible."""

    def __init__(self, layer: nn.Module, autocast: bool, device: torch.device) -> None:
        self.layer = layer
        self.autocast = autocast
        self.device = device

    def ctx(self) -> contextlib.AbstractContextManager[Any]:
        """Autocast to bf16 when activations are narrower than the weights."""
        if self.autocast:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def attn_in(self, h: torch.Tensor) -> torch.Tensor:
        """Input of q/k/v."""
        return self.layer.input_layernorm(h)

    def o_in(self, a: torch.Tensor, kw: dict[str, Any]) -> torch.Tensor:
        """Input of o_proj: attention output before the projection."""
        with _swapped(self.layer.self_attn, "o_proj", nn.Identity()):
            out = self.layer.self_attn(hidden_states=a, **kw)
        return out[0] if isinstance(out, tuple) else out

    def mlp_in(self, h: torch.Tensor) -> torch.Tensor:
        """Input of gate/up."""
        return self.layer.post_attention_layernorm(h)

    def down_in(self, b: torch.Tensor) -> torch.Tensor:
        """Input of down_proj: act(gate(b)) * up(b)."""
        with _swapped(self.layer.mlp, "down_proj", nn.Identity()):
            return self.layer.mlp(b)

    def full(self, h: torch.Tensor, kw: dict[str, Any]) -> torch.Tensor:
        """The whole layer."""
        out = self.layer(h, **kw)
        return out[0] if isinstance(out, tuple) else out


class _Stats:
    """Accumulators for one input group (shared by the linears that read that input)."""

    def __init__(self, factories: Mapping[str, StatisticFactory], width: int, device: torch.device) -> None:
        self.acc: dict[str, Statistic] = {name: f(width, device) for name, f in factories.items()}

    def update(self, x: torch.Tensor) -> None:
        for a in self.acc.values():
            a.update(x)

    def results(self) -> dict[str, torch.Tensor]:
        for name, a in self.acc.items():
            reduce_statistic(name, a)  # every rank then compresses from the statistics of all windows
        return {name: a.result() for name, a in self.acc.items()}


def _resolve_factories(compressor: LayerCompressor) -> dict[str, StatisticFactory]:
    out = {}
    for name, factory in compressor.statistics().items():
        if factory is None:
            if name not in BUILTIN_STATISTICS:
                raise UsageError(f"unknown statistic {name!r}",
                                 hint=f"built-ins are {sorted(BUILTIN_STATISTICS)}; or pass a factory")
            factory = BUILTIN_STATISTICS[name]
        out[name] = factory
    return out


class _Placement:
    """Moves one layer onto the compute device and back (to CPU RAM, or to the disk store)."""

    def __init__(self, model: nn.Module, device: torch.device, offload: bool, widen_to: torch.dtype | None) -> None:
        self.model = model
        self.device = device
        self.offload = offload
        self.store = store_of(model)
        self.widen_to = widen_to
        self.home: dict[int, tuple[torch.device, torch.dtype]] = {}

    def fetch(self, index: int, layer: nn.Module) -> nn.Module:
        if is_offloaded(layer):
            if self.store is None:
                raise UsageError(f"layer {index} has no weights in memory and no disk store",
                                 hint="open the model with compressor.calibration.open_lazy")
            self.store.load_module(layer, layer_prefix(index), self.device)
            self.home[index] = (torch.device("meta"), next(layer.parameters()).dtype)
        else:
            p = next(layer.parameters())
            self.home[index] = (p.device, p.dtype)
            layer.to(self.device)
        if self.widen_to is not None:
            layer.to(self.widen_to)  # lossless: the weights are narrower than the activations
        return layer

    def release(self, index: int, layer: nn.Module) -> None:
        home_device, home_dtype = self.home.pop(index)
        layer.to(home_dtype)
        if home_device.type == "meta":
            assert self.store is not None
            self.store.save_module(layer, layer_prefix(index))
        elif self.offload or home_device != self.device:
            layer.to(home_device)


def _windows_tensor(windows: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(windows) if not isinstance(windows, torch.Tensor) else windows)
    if t.dim() != 2:
        raise UsageError(f"calibration windows must be [N, L] token ids, got shape {tuple(t.shape)}",
                         hint="pass a 2-D int array")
    return t.long()


@torch.no_grad()
def estimate_run(handle: Any, samples: int, seqlen: int, compressor: LayerCompressor,
                 config: CalibrationConfig) -> MemoryEstimate:
    """The peak-memory estimate of a layer-sequential run (the model may live on the meta device)."""
    model, layers = handle.model, handle.layers
    lazy = store_of(model) is not None and is_offloaded(layers[0])
    return estimate(model, layers[0], samples, seqlen, config.batch_size, DTYPES[config.dtype].itemsize,
                    _resolve_factories(compressor), config.offload or lazy, weights_in_ram=not lazy,
                    device=torch.device(config.device))


# Without no_grad every layer's outputs would carry the autograd graph of all layers before it: on
# SmolLM2-135M that kept ~56 KB per calibration token per layer alive (27 GB for 32x512 windows).
# A compressor that trains something re-enables gradients locally (torch.enable_grad).
@torch.no_grad()
def run_layer_sequential(handle: Any, windows: np.ndarray | torch.Tensor, compressor: LayerCompressor,
                         config: CalibrationConfig | None = None) -> CalibrationReport:
    """Compress ``handle``'s decoder layers one at a time on calibration ``windows`` ([N, L] ids)."""
    config = config or CalibrationConfig()
    if config.dtype not in DTYPES:
        raise UsageError(f"unknown calibration dtype {config.dtype!r}", hint=f"use one of {sorted(DTYPES)}")
    if config.batch_size < 1:
        raise UsageError("batch_size must be at least 1", hint="use 1 or more")
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("device 'cuda' was requested but CUDA is not available", hint="use device: cpu")
    model = handle.model
    layers = handle.layers
    ids = _windows_tensor(windows)
    total = len(ids)
    ids = distributed.shard_windows(ids)  # data-parallel: each rank calibrates on its share of the windows
    n, seqlen = ids.shape
    start = time.perf_counter()

    act_dtype = DTYPES[config.dtype]
    weight_dtype = next(p for p in layers[0].parameters()).dtype
    autocast = act_dtype.itemsize < weight_dtype.itemsize
    widen_to = act_dtype if act_dtype.itemsize > weight_dtype.itemsize else None
    factories = _resolve_factories(compressor)
    lazy = store_of(model) is not None and is_offloaded(layers[0])
    offload = config.offload or lazy

    est = estimate_run(handle, n, seqlen, compressor, config)
    config.log(est.describe())
    if config.check_memory:
        check_fits(est)

    moved_whole = False
    if not offload and not lazy:
        home = next(model.parameters()).device
        if home != device:
            model.to(device)
            moved_whole = True

    hs, kws = capture_layer_inputs(model, ids, config.batch_size, device, act_dtype)
    placement = _Placement(model, device, offload, widen_to)
    report = CalibrationReport(total, seqlen, len(layers), 0.0, est.total, config.true_sequential, str(device),
                               config.dtype, distributed.world_size())
    try:
        for index in steps(range(len(layers)), "calibration: layers"):
            t0 = time.perf_counter()
            layer = placement.fetch(index, layers[index])
            _check_layer(layer)
            runner = _LayerRunner(layer, autocast, device)
            if config.true_sequential:
                _true_sequential_layer(index, runner, hs, kws, compressor, factories, device)
            else:
                _one_shot_layer(index, runner, hs, kws, compressor, factories, device)
            placement.release(index, layer)
            report.layer_seconds.append(time.perf_counter() - t0)
            config.log(f"layer {index + 1}/{len(layers)} done in {report.layer_seconds[-1]:.1f}s")
    finally:
        if moved_whole:
            model.to(home)
    report.seconds = time.perf_counter() - start
    return report


def _compress(compressor: LayerCompressor, step: LayerStep) -> None:
    """Compress one step; with several ranks, rank 0's result replaces the others' (bit-identical layers)."""
    compressor.compress(step)
    distributed.broadcast_module_(step.layer)


def _groups_wanted(index: int, compressor: LayerCompressor) -> list[tuple[str, ...]]:
    return [tuple(n for n in g if compressor.wants(index, n)) for g in GROUPS]


def _new_stats(group: Sequence[str], linears: dict[str, nn.Linear], factories: Mapping[str, StatisticFactory],
               device: torch.device) -> _Stats | None:
    if not group or not factories:
        return None
    return _Stats(factories, linears[group[0]].in_features, device)


def _step(index: int, layer: nn.Module, names: tuple[str, ...], pairs: list[tuple[tuple[str, ...], _Stats | None]],
          device: torch.device) -> LayerStep:
    linears, paths = _linears(layer)
    stats: dict[str, dict[str, torch.Tensor]] = {}
    for group, acc in pairs:
        results = acc.results() if acc is not None else {}
        for n in group:
            stats[n] = results
    qualified = {k: f"layers.{index}.{v}" for k, v in paths.items()}
    return LayerStep(index, layer, names, linears, stats, qualified, device)


def _one_shot_layer(index: int, runner: _LayerRunner, hs: list[torch.Tensor], kws: list[dict[str, Any]],
                    compressor: LayerCompressor, factories: Mapping[str, StatisticFactory],
                    device: torch.device) -> None:
    """Statistics of all linears from the uncompressed layer, compress all, then recompute outputs."""
    layer = runner.layer
    linears, _ = _linears(layer)
    wanted = _groups_wanted(index, compressor)
    accs = [_new_stats(g, linears, factories, device) for g in wanted]
    names = tuple(n for g in wanted for n in g)
    if names:
        with runner.ctx():
            for c, h in enumerate(hs):
                a = runner.attn_in(h)
                if accs[0] is not None:
                    accs[0].update(a)
                o_in = runner.o_in(a, kws[c])
                if accs[1] is not None:
                    accs[1].update(o_in)
                if accs[2] is None and accs[3] is None:
                    continue  # nothing after the attention needs statistics
                h2 = h + layer.self_attn.o_proj(o_in)
                b = runner.mlp_in(h2)
                if accs[2] is not None:
                    accs[2].update(b)
                if accs[3] is not None:
                    accs[3].update(runner.down_in(b))
        _compress(compressor, _step(index, layer, names, list(zip(wanted, accs)), device))
    with runner.ctx():
        for c in range(len(hs)):
            hs[c] = runner.full(hs[c], kws[c]).to(hs[c].dtype)


def _true_sequential_layer(index: int, runner: _LayerRunner, hs: list[torch.Tensor], kws: list[dict[str, Any]],
                           compressor: LayerCompressor, factories: Mapping[str, StatisticFactory],
                           device: torch.device) -> None:
    """Compress q/k/v, then o, then gate/up, then down, each on inputs from the groups before it."""
    layer = runner.layer
    wanted = _groups_wanted(index, compressor)
    dtype = hs[0].dtype

    def stage(group: tuple[str, ...], inputs: Callable[[int], torch.Tensor], keep: bool) -> list[torch.Tensor]:
        linears, _ = _linears(layer)
        acc = _new_stats(group, linears, factories, device)
        kept = []
        with runner.ctx():
            for c in range(len(hs)):
                if acc is None and not keep:
                    break
                x = inputs(c)
                if acc is not None:
                    acc.update(x)
                if keep:
                    kept.append(x)
        if group:
            _compress(compressor, _step(index, layer, group, [(group, acc)], device))
        return kept

    stage(wanted[0], lambda c: runner.attn_in(hs[c]), keep=False)
    o_ins = stage(wanted[1], lambda c: runner.o_in(runner.attn_in(hs[c]), kws[c]), keep=True)
    with runner.ctx():
        for c in range(len(hs)):
            o_in = o_ins[c]
            if o_in.shape[-1] != layer.self_attn.o_proj.in_features:  # heads were removed: recompute
                o_in = runner.o_in(runner.attn_in(hs[c]), kws[c])
            hs[c] = (hs[c] + layer.self_attn.o_proj(o_in)).to(dtype)
    del o_ins
    stage(wanted[2], lambda c: runner.mlp_in(hs[c]), keep=False)
    d_ins = stage(wanted[3], lambda c: runner.down_in(runner.mlp_in(hs[c])), keep=True)
    with runner.ctx():
        for c in range(len(hs)):
            d_in = d_ins[c]
            if d_in.shape[-1] != layer.mlp.down_proj.in_features:  # neurons were removed: recompute
                d_in = runner.down_in(runner.mlp_in(hs[c]))
            hs[c] = (hs[c] + layer.mlp.down_proj(d_in)).to(dtype)
