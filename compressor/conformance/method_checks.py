"""What every method plugin must do, checked on tiny Llama 3, Qwen2 and Qwen3 models.

A :class:`MethodRun` applies a method once to a fresh tiny model, with the network blocked and a
calibration loader that records whether it was used; each ``check_*`` function then judges one rule
and raises :class:`compressor.conformance.ConformanceError` naming it.
"""

from __future__ import annotations

import contextlib
import copy
import json
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from compressor.api import CompressorError, Kind, Method, ModelHandle, StageContext
from compressor.conformance import ConformanceError

FAMILIES = ("llama3", "qwen2", "qwen3")
CALIBRATION_SHAPE = (8, 32)  # windows x tokens the kit lends a method that asks for calibration
HEAL_SHAPE = (16, 32)  # windows x tokens of a heal method's training data
SPARSITY_STEP = 0.01  # a rise in the share of zero weights above this counts as sparsity
RELOAD_TOLERANCE = 1e-4  # max |logit difference| between the model in memory and its reloaded copy
CATEGORY = {Kind.DEPTH: "depth", Kind.WIDTH: "shape", Kind.NONUNIFORM: "shape", Kind.HEADS: "shape",
            Kind.UNSTRUCTURED: "sparsity", Kind.SEMI_STRUCTURED: "sparsity", Kind.W8A16: "quantization",
            Kind.W4A16: "quantization", Kind.W8A8: "quantization", Kind.RUNTIME_QUANT: "quantization"}


@contextlib.contextmanager
def network_blocked() -> Iterator[list[str]]:
    """Refuse every socket connection inside the block; yield the list of addresses that were tried."""
    tried: list[str] = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def refuse(self: socket.socket, address: Any) -> Any:
        if self.family == getattr(socket, "AF_UNIX", None):
            return real_connect(self, address)  # local IPC (e.g. a tokenizer's worker) is not the network
        tried.append(str(address))
        raise OSError(f"network access blocked by the conformance kit: connect to {address}")

    def refuse_ex(self: socket.socket, address: Any) -> Any:
        if self.family == getattr(socket, "AF_UNIX", None):
            return real_connect_ex(self, address)
        tried.append(str(address))
        return 111  # ECONNREFUSED

    socket.socket.connect, socket.socket.connect_ex = refuse, refuse_ex  # type: ignore[method-assign]
    try:
        yield tried
    finally:
        socket.socket.connect, socket.socket.connect_ex = real_connect, real_connect_ex  # type: ignore[method-assign]


@dataclass
class MethodRun:
    """One ``apply`` of a method to a fresh tiny model, and what happened around it."""

    method: Method
    options: Any
    family: str
    before: ModelHandle
    after: ModelHandle
    details: Any = None
    error: BaseException | None = None
    calibration_used: bool = False
    connections: list[str] = field(default_factory=list)


def tiny_model(family: str, tokenizer: bool = False) -> ModelHandle:
    """The kit's tiny model of ``family`` (4 layers, random weights, non-zero biases and norms)."""
    from compressor.testing import tiny_family, tiny_tokenizer

    return tiny_family(family, layers=4, seed=0, tokenizer=tiny_tokenizer() if tokenizer else None)


def run_method(cls: type[Method], raw_options: dict[str, Any], family: str, seed: int = 0) -> MethodRun:
    """Apply ``cls`` with ``raw_options`` to a fresh tiny ``family`` model; never raises what apply raises."""
    from compressor.testing import random_windows

    method, options = cls(), cls.Options.model_validate(raw_options)
    model = tiny_model(family)
    run = MethodRun(method, options, family, before=copy.deepcopy(model), after=model)

    def calibration() -> Any:
        run.calibration_used = True
        return random_windows(*CALIBRATION_SHAPE, int(model.config.vocab_size), seed=1).numpy()

    with tempfile.TemporaryDirectory(prefix="compressor-kit-") as work, network_blocked() as tried:
        ctx = StageContext(seed=seed, device="cpu", dtype="float32", workdir=Path(work), log=lambda _: None,
                           calibration_loader=calibration, teacher_loader=lambda: copy.deepcopy(run.before),
                           heal_loader=lambda: random_windows(*HEAL_SHAPE, int(model.config.vocab_size), 2).numpy())
        torch.manual_seed(seed)
        try:
            run.details = method.apply(model, options, ctx)
        except Exception as exc:  # judged by check_errors_are_compressor_errors
            run.error = exc
    run.connections = tried
    return run


def _succeeded(run: MethodRun) -> None:
    if run.error is not None:
        raise ConformanceError(f"{run.method.name} failed on a tiny {run.family} model with options "
                               f"{run.options.model_dump(mode='json')}: {type(run.error).__name__}: {run.error}")


def check_rejects_unknown_options(cls: type[Method]) -> None:
    """Options must refuse a key they do not define (subclass compressor.api.PluginOptions)."""
    try:
        cls.Options.model_validate({"surely_not_an_option_of_this_method": 1})
    except Exception:
        return
    raise ConformanceError(f"{cls.name}: its Options accepted an unknown key; derive them from "
                           "compressor.api.PluginOptions (extra='forbid') so that a misspelt option is an error")


def check_errors_are_compressor_errors(run: MethodRun) -> None:
    """What apply raises must be a compressor error type (the CLI maps those to exit codes and hints)."""
    if run.error is not None and not isinstance(run.error, CompressorError):
        raise ConformanceError(f"{run.method.name} raised {type(run.error).__name__}: {run.error}; raise an error "
                               "type of compressor.api (UsageError, DataError, ResourceError, ...) with a hint")


def observed_changes(before: ModelHandle, after: ModelHandle) -> set[str]:
    """What apply did to the model: depth, shape, sparsity and/or quantization."""
    changes: set[str] = set()
    if after.num_layers < before.num_layers:
        changes.add("depth")
    if after.quantization:
        changes.add("quantization")
    origin = after.original_layer_indices()
    old = before.layer_specs()
    for spec, o in zip(after.layer_specs(), origin):
        ref = old[o]
        if (spec.num_heads, spec.num_kv_heads, spec.intermediate_size) != (
                ref.num_heads, ref.num_kv_heads, ref.intermediate_size):
            changes.add("shape")
    if "quantization" not in changes:  # rounding to a grid zeroes small weights too: that is not sparsity

        def zero_share(handle: ModelHandle, layers: list[int]) -> float:
            weights = [m.weight for i in layers for m in handle.linears(i).values()]
            return sum(int((w == 0).sum()) for w in weights) / max(sum(w.numel() for w in weights), 1)

        if zero_share(after, list(range(after.num_layers))) > zero_share(before, origin) + SPARSITY_STEP:
            changes.add("sparsity")
    return changes


def check_kinds_match_changes(run: MethodRun) -> None:
    """kinds(options) must name what apply changed, no more and no less (exporters plan on it)."""
    _succeeded(run)
    declared = {CATEGORY[k] for k in run.method.kinds(run.options)}
    seen = observed_changes(run.before, run.after)
    if declared != seen:
        raise ConformanceError(f"{run.method.name} on {run.family}: kinds() says {sorted(declared) or 'nothing'} "
                               f"but apply changed {sorted(seen) or 'nothing'} (depth: fewer layers; shape: heads or "
                               "FFN width; sparsity: more zero weights; quantization: model.quantization set)")


def check_calibration_use(run: MethodRun) -> None:
    """needs_calibration(options) must say whether apply reads ctx.calibration_ids()."""
    _succeeded(run)
    needs = bool(run.method.needs_calibration(run.options))
    if needs != run.calibration_used:
        raise ConformanceError(f"{run.method.name}: needs_calibration() is {needs} but apply "
                               f"{'used' if run.calibration_used else 'never used'} ctx.calibration_ids(); the host "
                               "loads calibration data only when asked")


def check_config_matches_and_reloads(run: MethodRun) -> None:
    """The config must describe the tensors, and stock transformers must reload the saved model."""
    _succeeded(run)
    after, config = run.after, run.after.config
    if int(config.num_hidden_layers) != after.num_layers:
        raise ConformanceError(f"{run.method.name}: config.num_hidden_layers is {config.num_hidden_layers} but the "
                               f"model has {after.num_layers} layers (ModelHandle.drop_layers keeps them in step)")
    if not after.is_uniform():
        return  # per-layer sizes have no stock HF config: the exporters that support them check their own
    spec = after.layer_spec(0)
    expected = {"num_attention_heads": spec.num_heads, "num_key_value_heads": spec.num_kv_heads,
                "intermediate_size": spec.intermediate_size}
    wrong = {k: (getattr(config, k), v) for k, v in expected.items() if int(getattr(config, k)) != v}
    if wrong:
        raise ConformanceError(f"{run.method.name}: the config disagrees with the weights "
                               f"{ {k: f'config {a}, weights {b}' for k, (a, b) in wrong.items()} }; call "
                               "ModelHandle.sync_config() after resizing")
    from transformers import AutoModelForCausalLM

    ids = torch.randint(0, int(config.vocab_size), (1, 12), generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory(prefix="compressor-kit-") as d:
        after.save_hf(Path(d))
        reloaded = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
        with torch.no_grad():
            diff = float((reloaded(ids).logits - after.logits(ids)).abs().max())
    if not diff <= RELOAD_TOLERANCE:
        raise ConformanceError(f"{run.method.name}: the saved model, reloaded by transformers, differs from the "
                               f"model in memory by {diff:.3g} in the logits (tolerance {RELOAD_TOLERANCE})")


def check_details_are_json(run: MethodRun) -> None:
    """apply's details go into report.json: they must be strict JSON (no NaN, no objects)."""
    _succeeded(run)
    try:
        json.dumps(run.details, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConformanceError(f"{run.method.name}: its details are not JSON ({exc})") from None


def check_same_seed_same_result(run: MethodRun, again: MethodRun) -> None:
    """Two applies with the same seed and data must give the same weights (replay depends on it)."""
    _succeeded(run)
    _succeeded(again)
    a, b = run.after.model.state_dict(), again.after.model.state_dict()
    differ = sorted(k for k in a if k not in b or a[k].shape != b[k].shape or not torch.equal(a[k], b[k]))
    if differ or set(a) != set(b):
        raise ConformanceError(f"{run.method.name} on {run.family}: the same seed gave different weights "
                               f"({', '.join(differ[:3]) or 'other tensor names'}...); seed every random choice "
                               "from ctx.seed")


def check_no_network(run: MethodRun) -> None:
    """A method must not reach the network (builds run offline; nothing may download at run time)."""
    if run.connections:
        raise ConformanceError(f"{run.method.name} tried to connect to {', '.join(run.connections[:3])}; "
                               "a method must work offline")
