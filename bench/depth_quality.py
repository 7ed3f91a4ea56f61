"""Depth pruning quality on SmolLM2-135M: perplexity on Hamlet after removing 4, 6 and 8 layers.

Methods: ShortGPT Block Influence (one shot and iterative), Gromov angular distance, and
LLM-Streamline (trained one-layer replacement), plus Streamline's block dropped WITHOUT the
trained replacement (same parameter count as every other row of the same n), so the value of
the training is visible. Calibration: ../shared/data/smollm2-shakespeare/calib.npy; evaluation:
all windows of eval.npy. Run: ``.venv/bin/python bench/depth_quality.py`` (writes
bench/results/depth_quality.json).

The one-shot selections (BI, angular, Streamline's block) all come from ONE similarity pass over
the calibration set: they are the same functions ``layer_drop``/``streamline`` call (Streamline
through ``replace_block``, the body of its ``apply`` after the pass), so the result is identical
and the bench avoids repeating a 16k-token pass per row. Iterative BI is
greedy, so its first 4 and 6 removals are exactly what a run with layers=4 or 6 removes: one run
with layers=max(counts) gives all three.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compressor.api import StageContext
from compressor.layer_similarity import measure_similarity
from compressor.model import ModelHandle
from compressor.model_loading import load_model
from compressor.torch_runtime import perplexity
from compressor_methods.layer_drop import LayerDrop, LayerDropOptions, StreamlineOptions
from compressor_methods.layer_drop.shortgpt import select_angular, select_block_influence
from compressor_methods.layer_drop.streamline import replace_block, select_block

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "smollm2-shakespeare"


def clone(handle: ModelHandle) -> ModelHandle:
    """A private copy to prune."""
    return ModelHandle(copy.deepcopy(handle.model), handle.tokenizer, handle.source)


def main() -> None:
    """Run every method at every count and print/write the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", type=int, nargs="+", default=[4, 6, 8])
    ap.add_argument("--calib-windows", type=int, default=32)
    ap.add_argument("--eval-windows", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=StreamlineOptions.model_fields["epochs"].default)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's choice; 1 is faster on a heavily shared CPU)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "depth_quality.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    calib = np.ascontiguousarray(np.load(DATA / "calib.npy")[:args.calib_windows, :args.seq_len])
    evals = np.ascontiguousarray(np.load(DATA / "eval.npy")[:args.eval_windows, :args.seq_len])
    ctx = StageContext(seed=0, calibration_loader=lambda: calib, log=lambda msg: print("   ", msg, flush=True))

    original = load_model("smollm2-135m")
    n_layers = original.num_layers
    ppl_cache: dict[tuple[int, ...], float] = {}

    def evaluate(handle: ModelHandle, removed: list[int] | None = None) -> tuple[float, float]:
        key = tuple(removed) if removed is not None else None
        if key is not None and key in ppl_cache:  # same layers removed, same model: same perplexity
            return ppl_cache[key], 0.0
        t = time.perf_counter()
        ppl = perplexity(handle.model, evals, batch_size=4)
        if key is not None:
            ppl_cache[key] = ppl
        return ppl, time.perf_counter() - t

    rows: list[dict[str, Any]] = []

    def add(method: str, count: int, handle: ModelHandle, removed: list[int] | None, select_s: float,
            extra: dict[str, Any] | None = None, cacheable: bool = True) -> None:
        ppl, eval_s = evaluate(handle, removed if cacheable else None)
        row = {"method": method, "removed": count, "layers": handle.num_layers, "params": handle.num_parameters(),
               "removed_layers": removed, "ppl": ppl, "select_s": round(select_s, 1), "eval_s": round(eval_s, 1),
               **(extra or {})}
        rows.append(row)
        print(f"{method:24s} n={count}  layers={row['layers']:2d}  params={row['params']:,}  ppl={ppl:9.3f}  "
              f"removed={removed}  ({select_s:.0f}s select, {eval_s:.0f}s eval)", flush=True)

    def save(done: bool) -> dict[str, Any]:
        result = {"model": "smollm2-135m", "layers": n_layers, "calibration": list(calib.shape),
                  "evaluation": list(evals.shape), "streamline_epochs": args.epochs, "complete": done,
                  "rows": rows, "similarity_pass_s": round(sim_s, 1),
                  "total_s": round(time.perf_counter() - t_start, 1), "torch_threads": torch.get_num_threads(),
                  "machine": platform.platform(),
                  "note": "wall-clock times measured on a shared 2-core machine under contention"}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        return result

    sim_s = 0.0
    add("original", 0, original, [], 0.0)
    t = time.perf_counter()
    sim = measure_similarity(original, calib)
    sim_s = time.perf_counter() - t
    print(f"similarity pass over {calib.shape[0]}x{calib.shape[1]} tokens: {sim_s:.0f}s", flush=True)

    for count in args.counts:
        for method, removed in (("block_influence", sorted(select_block_influence(sim, count))),
                                ("angular", select_angular(sim, count))):
            pruned = clone(original)
            pruned.drop_layers(removed)
            add(method, count, pruned, removed, sim_s)
            del pruned
        start = select_block(sim, count)
        untrained = clone(original)
        block_drop = list(range(start + 1, start + count + 1))
        untrained.drop_layers(block_drop)
        add("streamline_untrained", count, untrained, block_drop, sim_s)
        del untrained
        t = time.perf_counter()
        trained = clone(original)
        # the same code Streamline.apply runs after its similarity pass, given the shared pass
        details = replace_block(trained, StreamlineOptions(layers=count, epochs=args.epochs), ctx, calib, sim)
        train = details["training"]
        add("streamline", count, trained, details["removed_layers"], sim_s + time.perf_counter() - t,
            {"replaced_block": details["replaced_block"], "best_epoch": train["best_epoch"],
             "val_mse_skip_block": train["val_mse_skip_block"], "val_mse_init": train["val_mse_init"],
             "val_mse_best": train["val_mse_best"], "history": train["history"]}, cacheable=False)
        del trained
        save(False)

    # iterative BI: one greedy run to the largest count; its prefixes are the smaller counts' answers
    t = time.perf_counter()
    iterative = clone(original)
    details = LayerDrop().apply(iterative, LayerDropOptions(layers=max(args.counts), iterative=True), ctx)
    iter_s = time.perf_counter() - t
    order = details["scores"]["removal_order"]
    del iterative
    for count in args.counts:
        pruned = clone(original)
        removed = sorted(order[:count])
        pruned.drop_layers(removed)
        add("block_influence_iter", count, pruned, removed, iter_s, {"removal_order": order[:count]})
        del pruned

    total_s = time.perf_counter() - t_start
    print()
    header = f"{'method':24s} {'n':>2s} {'layers':>6s} {'params':>12s} {'ppl':>9s}  removed layers"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['method']:24s} {r['removed']:2d} {r['layers']:6d} {r['params']:12,d} {r['ppl']:9.3f}  "
              f"{r['removed_layers']}")
    print(f"\ntotal wall time {total_s:.0f}s (torch threads {torch.get_num_threads()}, measured under contention)")
    save(True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
