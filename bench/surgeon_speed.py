"""Delivered speed of a structured LLM Surgeon model in ONNX Runtime and llama.cpp, against the dense model.

Takes the per-layer-size model that ``bench/surgeon_quality.py --save-structured DIR`` wrote (DeciLM
form; compressor loads it back without running code from the directory), exports it and the dense
SmolLM2 as ONNX (fp32) and GGUF (F32), and times each pair in the same run, alternating one
repeat at a time so that a drift in background load hits both alike.

    .venv/bin/python bench/surgeon_speed.py --model DIR [--rounds 7] [--threads 2]

Writes bench/results/surgeon_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from compressor.api import LatencySamples
from compressor.metrics import summarize_latency
from compressor.model_loading import load_model
from compressor_exporters.gguf import GgufExporter, GgufOptions
from compressor_exporters.gguf.runtime import LlamaCppRuntime
from compressor_exporters.onnx import OnnxExporter, OnnxOptions
from compressor_exporters.onnx.runtime import OnnxRuntime

REPO = Path(__file__).resolve().parents[1]


def _export(exporter, options, model, dest: Path) -> dict:
    exporter.check_model(model, options)
    return exporter.export(model, dest, options)


def _alternate(runtimes: dict, args: argparse.Namespace) -> dict:
    parts = {k: LatencySamples([], [], args.prompt_tokens, args.new_tokens) for k in runtimes}
    for rt in runtimes.values():  # warm-up: page in weights, build graphs and arenas
        rt.latency(args.prompt_tokens, args.new_tokens, repeats=1, warmup=1)
    for r in range(args.rounds):
        for k in (list(runtimes) if r % 2 == 0 else list(reversed(runtimes))):
            s = runtimes[k].latency(args.prompt_tokens, args.new_tokens, repeats=1, warmup=0)
            parts[k].prefill_s += s.prefill_s
            parts[k].decode_tok_s += s.decode_tok_s
    return {k: summarize_latency(v) for k, v in parts.items()}


def main() -> int:
    """Export both models to both runtimes, time them and write JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="the structured model directory (DeciLM form)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "surgeon_speed.json")
    args = p.parse_args()
    threads = args.threads or os.cpu_count() or 1
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    dense, pruned = load_model("smollm2-135m", hash_files=False), load_model(str(args.model), hash_files=False)
    result: dict = {"model": str(args.model), "threads": threads, "date": time.strftime("%Y-%m-%d"),
                    "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                    "parameters": {"dense": dense.num_parameters(), "pruned": pruned.num_parameters()},
                    "ffn_widths": [s.intermediate_size for s in pruned.layer_specs()]}
    with tempfile.TemporaryDirectory(prefix="surgeon-speed-") as tmp:
        work = Path(tmp)
        for runtime in ("onnx", "gguf"):
            log(f"{runtime}: export dense and pruned")
            if runtime == "onnx":
                ex, opts = OnnxExporter(), OnnxOptions()
                for name, model in (("dense", dense), ("pruned", pruned)):
                    _export(ex, opts, model, work / f"onnx-{name}")
                runtimes = {n: OnnxRuntime(work / f"onnx-{n}", threads=threads) for n in ("dense", "pruned")}
            else:
                ex, opts = GgufExporter(), GgufOptions(outtype="F32")
                files = {}
                for name, model in (("dense", dense), ("pruned", pruned)):
                    files[name] = work / f"gguf-{name}" / _export(ex, opts, model, work / f"gguf-{name}")["file"]
                n_ctx = args.prompt_tokens + args.new_tokens + 16
                runtimes = {n: LlamaCppRuntime(f, n_ctx, threads) for n, f in files.items()}
            try:
                log(f"{runtime}: timing, {args.rounds} alternating rounds")
                lat = _alternate(runtimes, args)
            finally:
                for rt in runtimes.values():
                    rt.close()
            result[runtime] = {
                "latency": lat,
                "decode_speedup": lat["pruned"]["decode_tok_s_median"] / lat["dense"]["decode_tok_s_median"],
                "prefill_speedup": lat["dense"]["prefill_s_median"] / lat["pruned"]["prefill_s_median"]}
            print(f"{runtime:5s} decode {result[runtime]['decode_speedup']:.3f}x  "
                  f"prefill {result[runtime]['prefill_speedup']:.3f}x the dense export", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
