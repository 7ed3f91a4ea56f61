"""Healing after structural pruning on SmolLM2-135M: Hamlet perplexity before and after ``distill``.

Usage: .venv/bin/python bench/heal_quality.py [--only depth4 depth8 surgeon20] [--steps 300] [--batch-size 4]
       [--seq-len 256] [--lr 1e-4] [--warmup-steps 0] [--patience 2] [--train all] [--hidden-weight 0]
       [--out FILE] [--export vllm] [--keep DIR] [--pruned-from RESULTS.json]
Writes bench/results/heal_quality.json (or --out). ``--export vllm`` adds a vLLM export to both builds and
``--keep DIR`` keeps the builds (DIR/<config>-pruned, DIR/<config>-healed), for bench/heal_speed.py.
``--pruned-from`` takes the pruned model's perplexity from an earlier results file of this script (same
prune, same machine) instead of building the prune alone again; the row records which file.

Each configuration is two real builds through ``compress build`` (transformers export; vllm in float32, as
DeciLM, for Surgeon's per-layer widths; no verify): the
pruned model, and the same prune followed by ``--heal distill``. Pruning: ``layer_drop`` (Block Influence)
removing 4 or 8 of 30 layers, or ``surgeon`` structured 20% (defaults, 5 shots), all on the default
calibration windows (32 x 512, the calibration plays). Healing trains on ``data.heal``: windows of the
calibration plays other than the calibration windows (the default), never Hamlet. Perplexity is measured in
PyTorch on all 32 x 512 windows of ../shared/data/smollm2-shakespeare/eval.npy, as in the depth table.
The heal stage's own record gives the steps, tokens seen, wall time and peak memory.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "smollm2-shakespeare"
PRUNE = {
    "depth4": ["--method", "layer_drop", "--layers", "4"],
    "depth8": ["--method", "layer_drop", "--layers", "8"],
    "surgeon20": ["--method", "surgeon", "-O", "structure=structured", "--sparsity", "0.2"],
}
TARGETS = {"depth4": 48.0, "depth8": 60.0, "surgeon20": 43.0}  # issue targets: healed perplexity below these
# the export perplexity is measured on: Surgeon's widths differ per layer, which the transformers format cannot
# hold; the vllm exporter writes them as DeciLM (here in float32, as the other configurations' exports)
MEASURED_EXPORT = {"depth4": ("transformers", []), "depth8": ("transformers", []),
                   "surgeon20": ("vllm", ["-E", "dtype=float32"])}


def _build(prune: list[str], heal: list[str], out: Path, exports: list[str]) -> dict:
    """One build; its report.json."""
    more = [a for e in exports for a in ("-e", e)]
    cmd = [sys.executable, "-m", "compressor", "build", "-m", "smollm2-135m", *prune, *heal, *more,
           "--no-verify", "-q", "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr[-3000:]}")
    return json.loads((out / "report.json").read_text())


def _perplexity(export: Path) -> float:
    from compressor.model_loading import load_model
    from compressor.torch_runtime import perplexity

    return perplexity(load_model(str(export), hash_files=False).model, np.load(DATA / "eval.npy"))


def main() -> None:
    """Prune, prune and heal, measure; print and write the table."""
    p = argparse.ArgumentParser()
    p.add_argument("--only", nargs="*", default=list(PRUNE))
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--patience", type=int, default=2)
    p.add_argument("--train", default="all")
    p.add_argument("--hidden-weight", type=float, default=0.0)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--heal-samples", type=int, default=1200)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "heal_quality.json")
    p.add_argument("--export", action="append", default=[], help="another export of both builds (e.g. vllm)")
    p.add_argument("--keep", type=Path, default=None, help="keep the builds in this directory")
    p.add_argument("--pruned-from", type=Path, default=None,
                   help="an earlier results file whose pruned perplexity is reused (the prune is not rebuilt)")
    args = p.parse_args()
    heal = ["--heal", "distill", "-H", f"steps={args.steps}", "-H", f"batch_size={args.batch_size}",
            "-H", f"lr={args.lr}", "-H", f"train={args.train}", "-H", f"hidden_weight={args.hidden_weight}",
            "-H", f"eval_every={args.eval_every}", "-H", f"warmup_steps={args.warmup_steps}",
            "-H", f"patience={args.patience}", "--heal-samples", str(args.heal_samples),
            "--heal-seq-len", str(args.seq_len)]
    results = {"date": datetime.date.today().isoformat(),
               "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, "
                          f"{psutil.virtual_memory().total / 2**30:.0f} GiB",
               "heal_flags": heal, "runs": {}}
    earlier = json.loads(args.pruned_from.read_text())["runs"] if args.pruned_from else {}
    with tempfile.TemporaryDirectory() as tmp:
        where = args.keep or Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        for name in args.only:
            measured, options = MEASURED_EXPORT[name]
            exports = [measured, *(e for e in args.export if e != measured)]
            if name in earlier:
                ppl_pruned, parameters = earlier[name]["perplexity_pruned"], earlier[name]["parameters"]
            else:
                pruned = _build([*PRUNE[name], *options], [], where / f"{name}-pruned", exports)
                ppl_pruned = _perplexity(where / f"{name}-pruned" / measured)
                parameters = pruned["summary"]["parameters"]
            healed = _build([*PRUNE[name], *options], heal, where / f"{name}-healed", exports)
            assert healed["summary"]["parameters"] == parameters, "the healed model's shapes differ from the prune's"
            ppl_healed = _perplexity(where / f"{name}-healed" / measured)
            stage = next(s for s in healed["stages"] if s["slot"] == "heal")
            d = stage["details"]
            row = {"parameters": parameters, "perplexity_pruned": round(ppl_pruned, 3),
                   "perplexity_healed": round(ppl_healed, 3), "target_below": TARGETS[name],
                   "met": ppl_healed < TARGETS[name], "steps": d["steps"], "best_step": d["best_step"],
                   "tokens_seen": d["tokens_seen"], "heal_seconds": stage["usage"]["seconds"],
                   "heal_peak_rss_gib": round(stage["usage"]["peak_rss_mb"] / 1024, 2),
                   "held_out": d["evaluations"]}
            if name in earlier:
                row["pruned_from"] = str(args.pruned_from)  # as given on the command line
            results["runs"][name] = row
            print(name, json.dumps(row), flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
