"""Depth pruning's delivered speed in ONNX Runtime and llama.cpp, timed exactly as the gate times it.

SmolLM2-135M and a copy with a fixed block of 8 of its 30 layers dropped (21-28, the block
bench/vllm_speed.py drops) are exported by the same exporter with the same options; each pair goes
through :func:`gate_pair.gate_pair`: both in worker processes, warmed up, then timed in interleaved
rounds with the idle one suspended, the speed-ups with the gate's 95% bootstrap interval. The block
is chosen for timing, not quality (its perplexity is unusable), so only speed and size are reported.

    .venv/bin/python bench/depth_speed.py [--targets onnx,gguf:F32,gguf:Q8_0] [--rounds 10] [--threads N]
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gate_pair import export_to, gate_pair, ratio_line, save_results  # noqa: E402

from compressor.api import Exporter  # noqa: E402
from compressor.model import ModelHandle  # noqa: E402
from compressor.model_loading import load_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "depth_speed.json"
DEFAULT_DROP = list(range(21, 29))


def exporter_for(target: str) -> tuple[Exporter, Any]:
    """``onnx`` (fp32) or ``gguf:<outtype>``: the exporter and its options."""
    if target == "onnx":
        from compressor_exporters.onnx import OnnxExporter, OnnxOptions

        return OnnxExporter(), OnnxOptions()
    if target.startswith("gguf:"):
        from compressor_exporters.gguf import GgufExporter, GgufOptions

        return GgufExporter(), GgufOptions(outtype=target.split(":", 1)[1])
    raise SystemExit(f"unknown target {target!r}: use onnx or gguf:<outtype>")


def main() -> None:
    """Export both models per target, time each pair, write the JSON and print one line per target."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", default="onnx,gguf:F32,gguf:Q8_0")
    p.add_argument("--drop", default=",".join(map(str, DEFAULT_DROP)))
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()

    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    drop = [int(i) for i in args.drop.split(",") if i.strip()]
    base = load_model("smollm2-135m")
    pruned = ModelHandle(copy.deepcopy(base.model), base.tokenizer, base.source)
    pruned.drop_layers(drop)
    results = {}
    with tempfile.TemporaryDirectory(prefix="depth-speed-") as tmp:
        for target in args.targets.split(","):
            ex, opts = exporter_for(target)
            dirs = [export_to(ex, opts, model, Path(tmp) / f"{target.replace(':', '-')}-{name}")
                    for name, model in (("full", base), ("pruned", pruned))]
            r = gate_pair(ex, opts, dirs[0], opts, dirs[1], rounds=args.rounds, prompt_tokens=args.prompt_tokens,
                          new_tokens=args.new_tokens, threads=args.threads)
            results[target] = r
            a, b = r["a"]["latency"], r["b"]["latency"]
            print(ratio_line(target, r) + f"; decode {a['decode_tok_s_median']:.1f} -> {b['decode_tok_s_median']:.1f} "
                  f"tok/s", flush=True)
    save_results(args.out, started, args, results, dropped_layers=drop)


if __name__ == "__main__":
    main()
