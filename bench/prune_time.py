"""Prune time of Wanda and SparseGPT on SmolLM2-135M against one plain forward pass over the calibration windows.

Usage: .venv/bin/python bench/prune_time.py [--threads 2] [--calib 32] [--model smollm2-135m] [--data DIR]
Writes bench/results/prune_time.json. Targets: Wanda total ≤ 1.5 × forward; SparseGPT ≲ 100 s (2 cores, fp32).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

from compressor.api import StageContext
from compressor.model import ModelHandle
from compressor.model_loading import load_model
from compressor_methods.sparsegpt import SparseGPT
from compressor_methods.wanda import Wanda

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "smollm2-shakespeare"


@torch.no_grad()
def forward_seconds(model: torch.nn.Module, windows: np.ndarray, batch_size: int) -> float:
    """Seconds for one plain forward pass (logits included) over ``windows``."""
    t0 = time.perf_counter()
    for start in range(0, len(windows), batch_size):
        model(torch.from_numpy(windows[start:start + batch_size]), use_cache=False)
    return time.perf_counter() - t0


def main() -> None:
    """Time the forward pass and the two methods; print a table and write JSON."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calib", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--only", nargs="*", default=None, help="method runs to time (default: all)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "prune_time.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    calib = np.load(args.data / "calib.npy")[:args.calib]
    original = load_model(args.model, hash_files=False)
    ctx = StageContext(calibration_loader=lambda: calib, log=lambda s: None)
    forward_seconds(original.model, calib[:args.batch_size], args.batch_size)  # warm-up
    rows = {"forward": forward_seconds(original.model, calib, args.batch_size)}
    runs = {"wanda 50%": (Wanda, {"sparsity": 0.5}), "wanda 2:4": (Wanda, {"pattern": "2:4"}),
            "sparsegpt 50%": (SparseGPT, {"sparsity": 0.5}), "sparsegpt 2:4": (SparseGPT, {"pattern": "2:4"})}
    for name, (cls, opts) in runs.items():
        if args.only and name not in args.only:
            continue
        handle = ModelHandle(copy.deepcopy(original.model), original.tokenizer, original.source)
        t0 = time.perf_counter()
        cls().apply(handle, cls.Options(batch_size=args.batch_size, **opts), ctx)
        rows[name] = time.perf_counter() - t0
        del handle
    result = {"threads": args.threads, "calib_windows": int(calib.shape[0]), "seqlen": int(calib.shape[1]),
              "seconds": {k: round(v, 2) for k, v in rows.items()},
              "over_forward": {k: round(v / rows["forward"], 3) for k, v in rows.items()},
              "targets": {"wanda_over_forward_max": 1.5, "sparsegpt_seconds_max": 100}}
    for k, v in rows.items():
        ratio = v / rows["forward"]
        print(f"{k:16s} {v:8.2f} s   {ratio:5.2f} x forward", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
