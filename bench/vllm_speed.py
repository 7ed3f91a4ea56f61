"""SmolLM2-135M in vLLM: unpruned vs 25% of its layers dropped, decode and prefill speed in one run.

Both models are exported with the `vllm` exporter and served by a vLLM worker process, one
engine at a time (two idle engines bound to the same cores slow each other down: measured
prefill went 4x slower for whichever engine ran second). With ``--passes 2`` the order is
unpruned, pruned, pruned, unpruned, so that a drift in background load hits both alike.

    .venv/bin/python bench/vllm_speed.py [--drop 21,22,...] [--repeats 7] [--passes 2] [--threads N]

With ``--quantize W8A8`` (or W4A16, W8A16) the second model is instead the unpruned model quantized
by the ``rtn`` method and written as compressed-tensors; both models' perplexity is then also
measured in vLLM on ``--eval-windows`` windows of eval.npy. With ``--sparse 2:4`` the second model is
the unpruned model with magnitude 2:4 sparsity, written as dense weights with zeros (how every
exporter writes sparsity): it shows what sparsity alone does to speed and size in vLLM.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from compressor.api import LatencySamples, RuntimeSettings, StageContext
from compressor.metrics import perplexity_from_scores, summarize_latency
from compressor.model import ModelHandle
from compressor.model_loading import load_model
from compressor.resources import dir_size
from compressor_exporters.vllm import VllmExporter, VllmOptions

RESULTS = Path(__file__).resolve().parent / "results" / "vllm_speed.json"
EVAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "smollm2-shakespeare" / "eval.npy"
DEFAULT_DROP = list(range(21, 29))  # 8 of 30 layers: the last 8 before the final layer


def parse_args() -> argparse.Namespace:
    """Command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--drop", default=",".join(map(str, DEFAULT_DROP)), help="comma-separated layer indices to drop")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--passes", type=int, default=1, help="engine starts per model (2: order A B B A)")
    p.add_argument("--threads", type=int, default=None, help="cores for vLLM (default: vLLM's auto binding)")
    p.add_argument("--quantize", default=None, choices=["W8A8", "W4A16", "W8A16"],
                   help="compare with an RTN-quantized copy instead of a depth-pruned one")
    p.add_argument("--sparse", default=None, choices=["2:4"],
                   help="compare with a magnitude-pruned N:M copy (dense weights with zeros) instead")
    p.add_argument("--eval-windows", type=int, default=4, help="--quantize: eval windows scored in vLLM")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    if args.quantize and args.sparse:
        p.error("--quantize and --sparse are alternatives")
    if args.out is None:
        args.out = RESULTS
        if args.quantize:
            args.out = RESULTS.with_name(f"vllm_{args.quantize.lower()}_speed.json")
        if args.sparse:
            args.out = RESULTS.with_name(f"vllm_sparse_{args.sparse.replace(':', '_')}_speed.json")
    return args


def merge(parts: list[LatencySamples]) -> LatencySamples:
    """Join single-repeat samples into one."""
    return LatencySamples([s for p in parts for s in p.prefill_s], [r for p in parts for r in p.decode_tok_s],
                          parts[0].prompt_tokens, parts[0].new_tokens)


def main() -> int:
    """Export both models, time them one engine at a time, print a table and JSON."""
    args = parse_args()
    drop = [int(x) for x in args.drop.split(",") if x.strip()]
    exporter, options = VllmExporter(), VllmOptions(dtype=args.dtype)
    max_len = max(args.prompt_tokens + args.new_tokens + 16, 520 if args.quantize else 0)
    settings = RuntimeSettings(device="cpu", max_len=max_len, threads=args.threads)
    original = load_model("smollm2-135m", hash_files=False)
    pruned = ModelHandle(copy.deepcopy(original.model), original.tokenizer, original.source)
    if args.quantize:
        from compressor_methods.quantize import RTN

        RTN().apply(pruned, RTN.Options(scheme=args.quantize), StageContext())
        drop = []
    elif args.sparse:
        from compressor_methods.magnitude import Magnitude

        Magnitude().apply(pruned, Magnitude.Options(pattern=args.sparse), StageContext())
        drop = []
    else:
        pruned.drop_layers(drop)
    models = {"unpruned": original, "pruned": pruned}
    windows = np.load(EVAL)[:args.eval_windows] if args.quantize else None
    perplexity: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-vllm-") as tmp:
        dirs = {}
        for key, model in models.items():
            dirs[key] = Path(tmp) / key
            dirs[key].mkdir()
            exporter.export(model, dirs[key], options)
        layers = {k: m.num_layers for k, m in models.items()}
        params = {k: m.num_parameters() for k, m in models.items()}
        del models, original, pruned
        order = [k for i in range(args.passes) for k in (dirs if i % 2 == 0 else reversed(list(dirs)))]
        samples: dict[str, list[LatencySamples]] = {k: [] for k in dirs}
        starts: dict[str, list[float]] = {k: [] for k in dirs}
        describe: dict[str, object] = {}
        for key in order:
            t0 = time.perf_counter()
            with exporter.open_runtime(dirs[key], options, settings) as rt:
                starts[key].append(time.perf_counter() - t0)
                print(f"{key}: engine started in {starts[key][-1]:.1f} s", file=sys.stderr)
                samples[key].append(rt.latency(args.prompt_tokens, args.new_tokens, args.repeats, args.warmup))
                describe = rt.describe()
                if windows is not None and key not in perplexity:
                    perplexity[key] = perplexity_from_scores(rt.score(windows, top_k=1))
        sizes = {k: dir_size(d) for k, d in dirs.items()}
    rows = {k: summarize_latency(merge(v)) for k, v in samples.items()}
    for k, v in samples.items():
        rows[k]["prefill_tok_s_p90"] = float(args.prompt_tokens / np.percentile(merge(v).prefill_s, 90))
        rows[k]["layers"], rows[k]["parameters"], rows[k]["size_bytes"] = layers[k], params[k], sizes[k]
        rows[k]["engine_start_s"] = starts[k]
        rows[k]["samples"] = {"prefill_s": merge(v).prefill_s, "decode_tok_s": merge(v).decode_tok_s}
    u, p = rows["unpruned"], rows["pruned"]
    ratios = {"decode_speedup_median": p["decode_tok_s_median"] / u["decode_tok_s_median"],
              "decode_speedup_p90": p["decode_tok_s_p90"] / u["decode_tok_s_p90"],
              "prefill_speedup_median": p["prefill_tok_s_median"] / u["prefill_tok_s_median"],
              "prefill_speedup_p90": p["prefill_tok_s_p90"] / u["prefill_tok_s_p90"],
              "size_ratio": p["size_bytes"] / u["size_bytes"], "layer_ratio": p["layers"] / u["layers"]}
    if perplexity:
        ratios["perplexity"] = perplexity
        ratios["perplexity_change_pct"] = 100 * (perplexity["pruned"] / perplexity["unpruned"] - 1)
    result = {"bench": "vllm_speed", "model": "smollm2-135m", "dropped_layers": drop, "dtype": args.dtype,
              "second_model": f"rtn {args.quantize} (compressed-tensors)" if args.quantize
              else f"magnitude {args.sparse} (dense with zeros)" if args.sparse else "depth-pruned",
              "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens, "repeats": args.repeats,
              "warmup": args.warmup, "passes": args.passes, "threads": args.threads, "runtime": describe, "results": rows, "ratios": ratios,
              "host": {"cpus": os.cpu_count(), "machine": platform.machine(), "load_avg_1m": os.getloadavg()[0]},
              "note": "decode tok/s = (new_tokens-1)/(t_generate(new_tokens) - t_generate(1)); "
                      "p90 of a rate is its slow tail (10th percentile of tok/s)"}
    print(f"\nvLLM {describe.get('vllm')} on {describe.get('device')}, {args.dtype}, prompt {args.prompt_tokens}, "
          f"{args.new_tokens} new tokens, "
          f"{args.repeats} repeats x {args.passes} engine start(s) per model")
    print(f"{'model':<10} {'layers':>6} {'size MB':>8} {'decode tok/s med':>17} {'p90':>7} "
          f"{'prefill tok/s med':>18} {'p90':>7}")
    for k, r in rows.items():
        print(f"{k:<10} {r['layers']:>6} {r['size_bytes'] / 1e6:>8.1f} {r['decode_tok_s_median']:>17.1f} "
              f"{r['decode_tok_s_p90']:>7.1f} {r['prefill_tok_s_median']:>18.0f} {r['prefill_tok_s_p90']:>7.0f}")
    print(f"{'ratio':<10} {ratios['layer_ratio']:>6.2f} {ratios['size_ratio']:>8.2f} "
          f"{ratios['decode_speedup_median']:>16.2f}x {ratios['decode_speedup_p90']:>6.2f}x "
          f"{ratios['prefill_speedup_median']:>17.2f}x {ratios['prefill_speedup_p90']:>6.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
