"""SmolLM2-135M in vLLM: unpruned vs 25% of its layers dropped, decode and prefill speed in one run.

Both models are exported with the `vllm` exporter and timed exactly as the verify gate times them
(bench/gate_pair.py): each in its own worker process, side by side, warmed up, then in interleaved
rounds (A B, B A, ...) with the idle engine suspended; speed-ups are the geometric mean of per-round
ratios with a 95% bootstrap interval.

    .venv/bin/python bench/vllm_speed.py [--drop 21,22,...] [--rounds 12] [--threads N]

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
import sys
import tempfile
from pathlib import Path

import numpy as np

from compressor.api import StageContext
from compressor.model import ModelHandle
from compressor.model_loading import load_model
from compressor_exporters.vllm import VllmExporter, VllmOptions
from gate_pair import gate_pair, host, ratio_line

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
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2)
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


def eval_windows(n: int, tokenizer: object) -> np.ndarray:
    """The first ``n`` Hamlet windows: the shared file, or the same windows built from the corpus."""
    if EVAL.is_file():
        return np.load(EVAL)[:n]
    from compressor.data import load_windows

    return load_windows("shakespeare", "evaluation", tokenizer, n, 512, seed=0)


def main() -> int:
    """Export both models, time them as the gate does, print a table and JSON."""
    args = parse_args()
    drop = [int(x) for x in args.drop.split(",") if x.strip()]
    exporter, options = VllmExporter(), VllmOptions(dtype=args.dtype)
    original = load_model("smollm2-135m", hash_files=False)
    second = ModelHandle(copy.deepcopy(original.model), original.tokenizer, original.source)
    if args.quantize:
        from compressor_methods.quantize import RTN

        RTN().apply(second, RTN.Options(scheme=args.quantize), StageContext())
        drop, label = [], f"rtn {args.quantize} (compressed-tensors)"
    elif args.sparse:
        from compressor_methods.magnitude import Magnitude

        Magnitude().apply(second, Magnitude.Options(pattern=args.sparse), StageContext())
        drop, label = [], f"magnitude {args.sparse} (dense with zeros)"
    else:
        second.drop_layers(drop)
        label = f"{len(drop)} of {original.num_layers} layers dropped"
    windows = eval_windows(args.eval_windows, original.tokenizer) if args.quantize else None
    layers = {"a": original.num_layers, "b": second.num_layers}
    params = {"a": original.num_parameters(), "b": second.num_parameters()}
    with tempfile.TemporaryDirectory(prefix="bench-vllm-") as tmp:
        dirs = {k: Path(tmp) / k for k in ("a", "b")}
        for key, model in (("a", original), ("b", second)):
            dirs[key].mkdir()
            exporter.export(model, dirs[key], options)
        del original, second
        r = gate_pair(exporter, options, dirs["a"], options, dirs["b"], rounds=args.rounds,
                      prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens, warmup=args.warmup,
                      windows=windows, threads=args.threads, max_len=max(args.prompt_tokens + args.new_tokens + 16,
                                                                          528 if windows is not None else 0))
    for key in ("a", "b"):
        r[key]["layers"], r[key]["parameters"] = layers[key], params[key]
    result = {"bench": "vllm_speed", "model": "smollm2-135m (Q4_1 GGUF dequantized)", "a": "unpruned", "b": label,
              "dropped_layers": drop, "dtype": args.dtype, "prompt_tokens": args.prompt_tokens,
              "new_tokens": args.new_tokens, "rounds": args.rounds, "warmup": args.warmup, "threads": args.threads,
              "timing": "the verify gate's: worker processes side by side, interleaved rounds, idle one suspended",
              "result": r, "host": host()}
    describe = r["a"]["runtime"] or {}
    print(f"\nvLLM {describe.get('vllm')} on {describe.get('device')}, {args.dtype}, prompt {args.prompt_tokens}, "
          f"{args.new_tokens} new tokens, {args.rounds} rounds")
    for key, name in (("a", "unpruned"), ("b", label)):
        lat = r[key]["latency"]
        print(f"{name:<40} layers {r[key]['layers']:>3}  size {r[key]['size_bytes'] / 1e6:7.1f} MB  "
              f"decode {lat['decode_tok_s_median']:6.1f} tok/s  prefill {lat['prefill_tok_s_median']:7.0f} tok/s"
              + (f"  ppl {r[key]['perplexity']:.2f}" if "perplexity" in r[key] else ""))
    print(ratio_line("speed-up", r))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
