"""The ``surgeon`` method: multi-shot LLM Surgeon with KFAC curvature and a global threshold."""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor.api import (Kind, MemoryEstimate, Method, StageContext, UsageError, available_bytes, broadcast_module_,
                            check_fits, is_offloaded, loss_curve, perplexity, steps, world_size)
from compressor_methods._masks import parse_pattern
from compressor_methods._pruning import calibration_windows, is_target, layer_names
from compressor_methods.surgeon.allocation import align_widths, choose_structures
from compressor_methods.surgeon.elements import ElementState, Inverses, invert
from compressor_methods.surgeon.kfac import collect_factors
from compressor_methods.surgeon.options import SurgeonOptions
from compressor_methods.surgeon.store import FactorStore
from compressor_methods.surgeon.structured import StructuredState


def estimate_memory(model: nn.Module, linears: dict[str, nn.Linear], samples: int, seqlen: int, batch: int,
                    factors_on_device: bool, device: torch.device) -> MemoryEstimate:
    """Peak bytes on the compute device: fp32 weights, one batch's activations and logits, and the factors."""
    cfg = model.config
    hidden, layers, vocab = int(cfg.hidden_size), int(cfg.num_hidden_layers), int(cfg.vocab_size)
    ffn = max(lin.in_features for lin in linears.values())
    weights = sum(p.numel() for p in model.parameters()) * 4
    tokens = min(batch, samples) * seqlen
    # stored for backward per layer: residual, norms, q/k/v/o, gate/up/act (≈ 8·hidden + 3·ffn), plus logits ×2
    activations = tokens * (layers * (8 * hidden + 3 * ffn) + 2 * vocab) * 4
    factor_bytes = sum(lin.in_features ** 2 + lin.out_features ** 2 for lin in linears.values()) * 4 * 2
    heads = int(cfg.num_attention_heads)
    workspace = min(batch, samples) * heads * seqlen * seqlen * 4 * 2 + 4 * ffn * ffn
    return MemoryEstimate(weights, activations, factor_bytes if factors_on_device else 0, workspace, str(device),
                          available_bytes(device))


class Surgeon(Method):
    """LLM Surgeon (van der Ouderaa et al., arXiv 2312.17244): KFAC costs, global threshold, OBS updates, multi-shot."""

    name = "surgeon"
    stage = "prune"
    summary = "prune with KFAC curvature, one global threshold and weight updates over several shots"
    Options = SurgeonOptions

    def needs_calibration(self, options: Any) -> bool:
        """LLM Surgeon needs calibration windows for its forward and backward passes."""
        return True

    def kinds(self, options: SurgeonOptions) -> frozenset[Kind]:
        """Unstructured, N:M, or layers of different sizes (with KV groups: also fewer heads)."""
        kind = {"unstructured": Kind.UNSTRUCTURED, "n:m": Kind.SEMI_STRUCTURED,
                "structured": Kind.NONUNIFORM}[options.structure or "unstructured"]
        return frozenset({kind, Kind.HEADS} if kind is Kind.NONUNIFORM and options.kv_groups else {kind})

    def estimate_memory(self, model: Any, options: SurgeonOptions, samples: int, seq_len: int,
                        ctx: StageContext) -> Any:
        """Weights, one batch's activations and logits, and the KFAC factors."""
        linears, _ = self._linears(model, options)
        return estimate_memory(model.model, linears, min(samples, options.nsamples or samples),
                               min(seq_len, options.seqlen or seq_len), options.batch_size,
                               options.factors_on == "device", torch.device(options.device or ctx.device))

    def apply(self, model: Any, options: SurgeonOptions, ctx: StageContext) -> dict[str, Any]:
        """Prune ``model`` in place over ``options.shots`` shots."""
        if is_offloaded(model.model):
            raise UsageError("surgeon needs the whole model in memory (it runs full forward and backward passes)",
                             hint="load the model without offload, or use sparsegpt/wanda with offload: true")
        device = torch.device(options.device or ctx.device)
        windows = calibration_windows(ctx, options)  # type: ignore[arg-type]
        hf = model.model
        first = next(hf.parameters())
        home, dtype = first.device, first.dtype  # read now: .to() below may move this very tensor
        hf.to(device=device, dtype=torch.float32)  # curvature and updates are done in fp32, as in the paper
        try:
            return self._run(model, options, ctx, windows, device)
        finally:
            hf.to(device=home, dtype=dtype)

    def write_paths(self, options: SurgeonOptions) -> list[Path]:
        """factors_on: disk writes its factor files under factors_dir (or the temporary directory)."""
        if options.factors_on != "disk":
            return []
        return [Path(options.factors_dir or tempfile.gettempdir())]

    def _linears(self, model: Any, options: SurgeonOptions) -> tuple[dict[str, nn.Linear], list[dict[str, str]]]:
        names = layer_names(model)
        found = {}
        for i, per_layer in enumerate(names):
            modules = model.linears(i)
            for short, qualified in per_layer.items():
                if options.structure == "structured" or is_target(qualified, options):  # type: ignore[arg-type]
                    found[qualified] = modules[short]
        if not found:
            raise UsageError("the include/exclude patterns select no decoder linear",
                             hint="names look like 'layers.3.mlp.down_proj'")
        if options.structure == "n:m":
            _, m = parse_pattern(options.pattern or "")
            bad = [n for n, lin in found.items() if lin.in_features % m]
            if bad:
                raise UsageError(f"{bad[0]} has {found[bad[0]].in_features} input columns, not a multiple of {m}",
                                 hint="exclude it or use another pattern")
        return found, names

    def _run(self, model: Any, options: SurgeonOptions, ctx: StageContext, windows: Any,
             device: torch.device) -> dict[str, Any]:
        hf = model.model
        home = device if options.factors_on == "device" else torch.device("cpu")
        spill = (options.factors_dir or tempfile.gettempdir()) if options.factors_on == "disk" else None
        structured = options.structure == "structured"
        all_names = layer_names(model)
        linears, _ = self._linears(model, options)
        est = estimate_memory(hf, linears, len(windows), windows.shape[1], options.batch_size,
                              options.factors_on == "device", device)
        ctx.log(f"surgeon: {est.describe()}")
        check_fits(est)
        params_before, decoder_before = model.num_parameters(), model.decoder_linear_parameters()
        n_m = parse_pattern(options.pattern) if options.structure == "n:m" and options.pattern else None
        elements = None if structured else ElementState(linears, n_m, options.min_density,
                                                             options.n_m_schedule)
        shaper = StructuredState(model.layers, model.head_dim, options.min_density, options.kv_groups) \
            if structured else None
        shots: list[dict[str, Any]] = []
        started = time.perf_counter()
        for t in steps(range(1, options.shots + 1), "surgeon: shots"):
            t0 = time.perf_counter()
            fraction = options.target * t / options.shots
            if structured:  # modules are replaced by smaller ones every shot
                linears = {q: model.linears(i)[q.rsplit(".", 1)[-1]]
                           for i, per_layer in enumerate(all_names) for q in per_layer.values()}
            with FactorStore(home, spill) as store:  # a shot's factors are dropped after it
                curv = collect_factors(hf, linears, windows, options.batch_size, device, store,
                                       options.gradient_checkpointing)
                inverses: dict[str, Inverses] = {name: invert(f, options.damp_a, options.g_damping, device, store)
                                                 for name, f in curv.factors.items()}
                record: dict[str, Any] = {"shot": t, "target": round(fraction, 6), "loss_before": round(curv.loss, 6)}
                if elements is not None:
                    elements.shot(fraction, inverses, options.max_correlate, options.add_update,
                                  options.hold_pruned, options.adaptive_n_m)
                    record["achieved"] = round(elements.overall(), 6)
                else:
                    assert shaper is not None
                    candidates, alive = shaper.candidates(curv.factors, inverses, all_names)
                    removed_now = decoder_before - model.decoder_linear_parameters()
                    want = round(decoder_before * fraction) - removed_now
                    chosen = choose_structures(candidates, max(want, 0), shaper.minimum, alive)
                    chosen = align_widths(chosen, candidates, options.width_multiple, max(want, 0), shaper.minimum)
                    shaper.remove(chosen, inverses, all_names)
                    record["removed_neurons"] = sum(s.kind == "neuron" for s in chosen)
                    record["removed_kv_groups"] = sum(s.kind == "kv_group" for s in chosen)
                    record["achieved"] = round(1 - model.decoder_linear_parameters() / decoder_before, 6)
                del curv, inverses
            broadcast_module_(hf)  # with several ranks: rank 0's weights everywhere, even where kernels vary (CUDA)
            record["seconds"] = round(time.perf_counter() - t0, 2)
            ctx.log(f"surgeon: shot {t}/{options.shots}: loss {record['loss_before']:.4f} -> "
                    f"removed {record['achieved']:.2%} ({record['seconds']:.1f} s)")
            shots.append(record)
        final = math.log(perplexity(hf, windows, options.batch_size))  # mean next-token NLL
        model.sync_config()
        details: dict[str, Any] = {
            "structure": options.structure, "pattern": options.pattern, "target": options.target,
            "shots": shots, "final_loss": round(final, 6), "seconds_total": round(time.perf_counter() - started, 2),
            "memory_estimate_bytes": est.total, "damp_a": options.damp_a, "damp_g": options.g_damping,
            "processes": world_size(),  # data-parallel ranks that shared the curvature passes
            # the loss before shot t is the loss after t - 1 shots; the last point is after all of them
            "loss_curves": [loss_curve("calibration loss as pruning proceeds", "shots done", "mean NLL (nats)",
                                       list(range(len(shots) + 1)),
                                       loss=[s["loss_before"] for s in shots] + [round(final, 6)])],
        }
        if device.type == "cuda":
            details["peak_cuda_bytes"] = int(torch.cuda.max_memory_allocated(device))
        if elements is not None:
            details["achieved_sparsity"] = round(elements.overall(), 6)
            details["sparsity_per_module"] = elements.sparsity()
        else:
            details["layer_sizes"] = [s.to_dict() for s in model.layer_specs()]
            details["parameters"] = [params_before, model.num_parameters()]
            details["decoder_linear_parameters"] = [decoder_before, model.decoder_linear_parameters()]
        return details
