"""Perplexity of SmolLM2-135M on Hamlet after magnitude / Wanda / SparseGPT pruning (fp32, 32 eval windows).

Usage: .venv/bin/python bench/sparsity_quality.py [--only NAME ...] [--calib N] [--eval N] [--true-sequential 0|1]
Writes bench/results/sparsity_quality.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np

from compressor.api import StageContext
from compressor.model import ModelHandle
from compressor.model_loading import load_model
from compressor.torch_runtime import perplexity
from compressor_methods.magnitude import Magnitude
from compressor_methods.sparsegpt import SparseGPT
from compressor_methods.wanda import Wanda

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "smollm2-shakespeare"
# reference perplexities from the issue; ours must not exceed them by more than 1%
REFERENCE = {"dense": 40.60, "magnitude 2:4": 1033.2, "wanda 50%": 72.52, "wanda 2:4": 144.50,
             "sparsegpt 50%": 62.02, "sparsegpt 2:4": 79.58}
RUNS = {
    "dense": None,
    "magnitude 50%": (Magnitude, {"sparsity": 0.5}),
    "magnitude 2:4": (Magnitude, {"pattern": "2:4"}),
    "wanda 50%": (Wanda, {"sparsity": 0.5}),
    "wanda 2:4": (Wanda, {"pattern": "2:4"}),
    "wanda 4:8": (Wanda, {"pattern": "4:8"}),
    "sparsegpt 50%": (SparseGPT, {"sparsity": 0.5}),
    "sparsegpt 2:4": (SparseGPT, {"pattern": "2:4"}),
    "sparsegpt 4:8": (SparseGPT, {"pattern": "4:8"}),
    "magnitude width 25%": (Magnitude, {"structure": "width", "width_fraction": 0.25}),
    "wanda width 25%": (Wanda, {"structure": "width", "width_fraction": 0.25}),
    "sparsegpt width 25%": (SparseGPT, {"structure": "width", "width_fraction": 0.25}),
}


def main() -> None:
    """Run the selected configurations and print a table."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", nargs="*", default=None, help="run names (default: all)")
    parser.add_argument("--calib", type=int, default=32)
    parser.add_argument("--eval", type=int, default=32)
    parser.add_argument("--true-sequential", type=int, choices=[0, 1], default=None,
                        help="force the engine mode (default: each method's own default)")
    parser.add_argument("--model", default="smollm2-135m", help="model reference (default: the built-in SmolLM2)")
    parser.add_argument("--data", type=Path, default=DATA, help="folder holding calib.npy and eval.npy")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "sparsity_quality.json")
    args = parser.parse_args()
    calib = np.load(args.data / "calib.npy")[:args.calib]
    evals = np.load(args.data / "eval.npy")[:args.eval]
    original = load_model(args.model, device=args.device, hash_files=False)
    ctx = StageContext(device=args.device, calibration_loader=lambda: calib, log=lambda s: None)
    out_path = args.out
    results = json.loads(out_path.read_text()) if out_path.is_file() else {}
    for name, spec in RUNS.items():
        if args.only and name not in args.only:
            continue
        handle = ModelHandle(copy.deepcopy(original.model), original.tokenizer, original.source)
        t0 = time.perf_counter()
        details = {}
        if spec is not None:
            cls, opts = spec
            if args.true_sequential is not None and cls is not Magnitude:
                opts = {**opts, "true_sequential": bool(args.true_sequential)}
            details = cls().apply(handle, cls.Options(**opts), ctx)
        seconds = time.perf_counter() - t0
        ppl = perplexity(handle.model, evals)
        ref = REFERENCE.get(name)
        row = {"perplexity": round(ppl, 3), "reference": ref,
               "within_1pct": None if ref is None else bool(ppl <= ref * 1.01),
               "prune_seconds": round(seconds, 1), "achieved_sparsity": details.get("achieved_sparsity"),
               "intermediate_size": details.get("intermediate_size"),
               "calib_windows": len(calib), "eval_windows": len(evals), "true_sequential": details.get("calibration", {}).get("true_sequential"),
               "device": args.device}
        forced = args.true_sequential is not None and spec is not None and spec[0] is not Magnitude
        key = name + ((" (true_sequential)" if args.true_sequential else " (one-shot)") if forced else "")
        results[key] = row
        print(f"{key:40s} ppl {ppl:9.3f}  ref {ref if ref else '-':>8}  prune {seconds:6.1f}s", flush=True)
        out_path.write_text(json.dumps(results, indent=1))
        del handle


if __name__ == "__main__":
    main()
