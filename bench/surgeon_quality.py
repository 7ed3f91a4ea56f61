"""LLM Surgeon on SmolLM2-135M against SparseGPT and Wanda: perplexity on Hamlet, time per shot, peak memory.

Runs, on ../shared/data/smollm2-shakespeare (32 calibration windows, 32 evaluation windows of 512):
surgeon at 50% unstructured, 2:4, and structured with 20% of the decoder's linear parameters
removed; SparseGPT at 50% and 2:4; SparseGPT-width and Wanda-width removing the same 20% (MLP
neurons, the same count in every layer). Every run starts from a fresh copy of the model.

    .venv/bin/python bench/surgeon_quality.py [--device cuda] [--shots 5] [--only NAME ...]
        [--save-structured DIR]   # also write the structured surgeon model (DeciLM form) for bench/surgeon_speed.py

Writes bench/results/surgeon_quality.json (runs merge into what is there).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch

from compressor.api import StageContext
from compressor.model import ModelHandle
from compressor.model_loading import load_model
from compressor.torch_runtime import perplexity
from compressor_methods.sparsegpt import SparseGPT
from compressor_methods.surgeon import Surgeon
from compressor_methods.wanda import Wanda

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "smollm2-shakespeare"
REFERENCE = {"sparsegpt 50%": 62.02, "sparsegpt 2:4": 79.58}  # the published-method figures
STRUCTURED = 0.2


def mlp_width_fraction(model: ModelHandle, fraction: float) -> float:
    """The width_fraction of MLP neurons that removes ``fraction`` of the decoder's linear parameters."""
    spec = model.layer_spec(0)
    per_neuron = 3 * model.hidden_size * model.num_layers
    neurons = round(fraction * model.decoder_linear_parameters() / per_neuron)
    return neurons / spec.intermediate_size


def runs(model: ModelHandle, shots: int, max_correlate: int) -> dict[str, tuple | None]:
    """Name -> (method class, options) of every configuration."""
    width = mlp_width_fraction(model, STRUCTURED)
    s = {"shots": shots}
    return {
        "dense": None,
        "surgeon structured 20%": (Surgeon, {**s, "structure": "structured", "sparsity": STRUCTURED}),
        "surgeon structured 20% damp_a=0.1": (Surgeon, {**s, "structure": "structured", "sparsity": STRUCTURED,
                                                        "damp_a": 0.1}),
        "sparsegpt width 20%": (SparseGPT, {"structure": "width", "width_fraction": width}),
        "wanda width 20%": (Wanda, {"structure": "width", "width_fraction": width}),
        "surgeon 50%": (Surgeon, {**s, "sparsity": 0.5, "max_correlate": max_correlate}),
        "surgeon 2:4": (Surgeon, {**s, "pattern": "2:4", "max_correlate": max_correlate}),
        "surgeon 2:4 per_row": (Surgeon, {**s, "pattern": "2:4", "max_correlate": max_correlate,
                                          "n_m_schedule": "per_row", "hold_pruned": False,
                                          "adaptive_n_m": False}),  # measured with the paper's chunks
        "surgeon 50% paper chunks": (Surgeon, {**s, "sparsity": 0.5, "max_correlate": max_correlate,
                                               "hold_pruned": False}),
        "surgeon 2:4 paper chunks": (Surgeon, {**s, "pattern": "2:4", "max_correlate": max_correlate,
                                               "hold_pruned": False, "adaptive_n_m": False}),
        "surgeon 2:4 no repick": (Surgeon, {**s, "pattern": "2:4", "max_correlate": max_correlate,
                                            "adaptive_n_m": False}),
        "surgeon 50% summed chunks": (Surgeon, {**s, "sparsity": 0.5, "max_correlate": max_correlate,
                                                "add_update": False}),
        "surgeon 2:4 summed chunks": (Surgeon, {**s, "pattern": "2:4", "max_correlate": max_correlate,
                                                "add_update": False}),
        "sparsegpt 50%": (SparseGPT, {"sparsity": 0.5}),
        "sparsegpt 2:4": (SparseGPT, {"pattern": "2:4"}),
    }


def main() -> None:
    """Run the configurations, print a table and write JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="*", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--max-correlate", type=int, default=1000)
    p.add_argument("--calib", type=int, default=32)
    p.add_argument("--eval", type=int, default=32)
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--save-structured", type=Path, default=None)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "surgeon_quality.json")
    args = p.parse_args()
    calib = np.load(args.data / "calib.npy")[:args.calib]
    evals = np.load(args.data / "eval.npy")[:args.eval]
    original = load_model(args.model, device=args.device, hash_files=False)
    ctx = StageContext(device=args.device, calibration_loader=lambda: calib, log=lambda m: print("   ", m, flush=True))
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    for name, spec in runs(original, args.shots, args.max_correlate).items():
        if args.only and name not in args.only:
            continue
        model = ModelHandle(copy.deepcopy(original.model), original.tokenizer, original.source)
        decoder_before = model.decoder_linear_parameters()
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        details = {} if spec is None else spec[0]().apply(model, spec[0].Options(**spec[1]), ctx)
        seconds = time.perf_counter() - t0
        ppl = perplexity(model.model, evals)
        row = {"perplexity": round(ppl, 3), "reference": REFERENCE.get(name), "prune_seconds": round(seconds, 1),
               "options": None if spec is None else spec[1],
               "decoder_linear_removed": round(1 - model.decoder_linear_parameters() / decoder_before, 5),
               "achieved_sparsity": details.get("achieved_sparsity"),
               "seconds_per_shot": [s["seconds"] for s in details.get("shots", [])],
               "loss_per_shot": [s["loss_before"] for s in details.get("shots", [])],
               "final_calibration_loss": details.get("final_loss"),
               "ffn_widths": [s["intermediate_size"] for s in details["layer_sizes"]] if "layer_sizes" in details
               else None,
               "peak_memory_bytes": (torch.cuda.max_memory_allocated() if args.device.startswith("cuda")
                                     else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024),
               "peak_memory_kind": "CUDA max allocated" if args.device.startswith("cuda")
               else "process peak RSS so far (cumulative over runs)",
               "device": f"{args.device} ({device_name})", "calib_windows": len(calib), "eval_windows": len(evals),
               "date": time.strftime("%Y-%m-%d")}
        results[name] = row
        print(f"{name:26s} ppl {ppl:9.3f}  ref {row['reference'] or '-':>6}  prune {seconds:7.1f}s  "
              f"removed {row['decoder_linear_removed']:.3f}", flush=True)
        args.out.write_text(json.dumps(results, indent=1))
        if name == "surgeon structured 20%" and args.save_structured:
            from compressor_exporters.vllm import VllmExporter, VllmOptions

            args.save_structured.mkdir(parents=True, exist_ok=True)
            VllmExporter().export(model, args.save_structured, VllmOptions(dtype="float32"))
        del model


if __name__ == "__main__":
    main()
