"""SmolLM2-135M in llama.cpp through the `gguf` exporter: fidelity, depth pruning speed-up, quant types.

In one run:
1. the F32 export against PyTorch fp32: the first 32 greedy tokens, and perplexity on the eval windows;
2. 8 of 30 layers dropped (in F32 and Q8_0): decode tok/s against the unpruned export of the same type;
   every file is timed in alternation (one repeat each, order reversed every round) so that a drift in
   background load hits all of them alike;
3. F16, Q8_0 and Q4_K_M: file size, decode/prefill speed and perplexity change against F32.

    .venv/bin/python bench/gguf_speed.py [--windows 32] [--types F16,Q8_0,Q4_K_M] [--rounds 7] [--threads 2]

The README quotes this script for fidelity (step 1) only. Its speed figures (steps 2 and 3) use the
earlier round-robin timing; the README's llama.cpp speed figures come from bench/depth_speed.py and
bench/gguf_type_speed.py, which time exactly as the verify gate does.

On a machine whose cores are busy with other work, pass --threads 1: llama.cpp's spinning thread pool
collapses when oversubscribed (measured here: Q8_0 decode 58 tok/s with 1 thread, 3-33 tok/s with 2).
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

from compressor.api import LatencySamples, RuntimeSettings
from compressor.metrics import perplexity_from_scores, summarize_latency
from compressor.model import ModelHandle
from compressor.model_loading import load_model
from compressor.torch_runtime import TorchRuntime
from compressor_exporters.gguf import GgufExporter, GgufOptions
from compressor_exporters.gguf.runtime import LlamaCppRuntime, llama_cpp_version

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "gguf_speed.json"
EVAL = REPO.parent / "shared" / "data" / "smollm2-shakespeare" / "eval.npy"
DEFAULT_DROP = list(range(21, 29))  # 8 of 30 layers: the last 8 before the final layer
PROMPT = "The capital of France is"


def parse_args() -> argparse.Namespace:
    """Command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--windows", type=int, default=32, help="eval windows for perplexity (all 32 by default)")
    p.add_argument("--types", default="F16,Q8_0,Q4_K_M", help="extra outtypes to compare with F32")
    p.add_argument("--drop", default=",".join(map(str, DEFAULT_DROP)), help="layers to drop for the speed test")
    p.add_argument("--pruned-types", default="F32,Q8_0", help="outtypes in which the pruned model is compared")
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=7, help="alternating timing rounds per model")
    p.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: all cores)")
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args()


def greedy_argmax(model, prompt: list[int], n: int) -> list[int]:
    """Pure greedy decoding in PyTorch (argmax every step, EOS not suppressed), as llama.cpp's runtime does.

    TorchRuntime.generate passes min_new_tokens to HF generate, which masks EOS until the end, so it
    differs from plain argmax whenever the model wants to stop early.
    """
    import torch

    ids = torch.tensor([prompt])
    out: list[int] = []
    with torch.no_grad():
        res = model(ids, use_cache=True)
        for _ in range(n):
            tok = int(res.logits[0, -1].argmax())
            out.append(tok)
            res = model(torch.tensor([[tok]]), past_key_values=res.past_key_values, use_cache=True)
    return out


def merge(parts: list[LatencySamples]) -> LatencySamples:
    """Join single-repeat samples into one."""
    return LatencySamples([s for p in parts for s in p.prefill_s], [r for p in parts for r in p.decode_tok_s],
                          parts[0].prompt_tokens, parts[0].new_tokens)


def export(model: ModelHandle, dest: Path, outtype: str) -> tuple[Path, dict]:
    """Export with the gguf exporter and return the file and its details."""
    ex, opts = GgufExporter(), GgufOptions(outtype=outtype)
    ex.check_model(model, opts)
    t0 = time.perf_counter()
    details = ex.export(model, dest, opts)
    details["export_s"] = time.perf_counter() - t0
    return dest / details["file"], details


def timed_alternately(paths: dict[str, Path], args: argparse.Namespace, settings: RuntimeSettings) -> dict:
    """Open every file once, then time them one repeat at a time in turn, ``rounds`` times."""
    n_ctx = args.prompt_tokens + args.new_tokens + 16  # small score buffers: several models stay open
    runtimes = {k: LlamaCppRuntime(p, n_ctx, settings.threads) for k, p in paths.items()}
    try:
        for rt in runtimes.values():  # warm-up: page the weights in, build the graphs
            rt.latency(args.prompt_tokens, args.new_tokens, repeats=1, warmup=1)
        parts: dict[str, list[LatencySamples]] = {k: [] for k in runtimes}
        for r in range(args.rounds):
            order = list(runtimes) if r % 2 == 0 else list(reversed(runtimes))
            for k in order:
                parts[k].append(runtimes[k].latency(args.prompt_tokens, args.new_tokens, repeats=1, warmup=0))
    finally:
        for rt in runtimes.values():
            rt.close()
    return {k: summarize_latency(merge(v)) for k, v in parts.items()}


def perplexity_in(path: Path, windows: np.ndarray, settings: RuntimeSettings) -> tuple[float, object]:
    """Perplexity of a GGUF file in llama.cpp, and its scores."""
    with LlamaCppRuntime(path, settings.max_len, settings.threads) as rt:
        scores = rt.score(windows, top_k=1)
    return perplexity_from_scores(scores), scores


def main() -> int:
    """Run the three comparisons, print a table and write JSON."""
    args = parse_args()
    drop = [int(x) for x in args.drop.split(",") if x.strip()]
    types = [t for t in args.types.split(",") if t.strip()]
    pruned_types = [t for t in args.pruned_types.split(",") if t.strip()]
    types += [t for t in pruned_types if t != "F32" and t not in types]  # each pruned type needs its baseline
    threads = args.threads or os.cpu_count() or 1
    settings = RuntimeSettings(max_len=640, threads=threads)
    windows = np.load(EVAL)[: args.windows]
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731

    log("loading SmolLM2-135M")
    original = load_model("smollm2-135m")
    prompt = original.tokenizer(PROMPT)["input_ids"]
    torch_rt = TorchRuntime(original.model)
    log("PyTorch fp32: greedy 32 tokens and perplexity")
    torch_tokens = greedy_argmax(original.model, prompt, 32)
    torch_generate = torch_rt.generate([prompt], 32)[0]
    torch_ppl = perplexity_from_scores(torch_rt.score(windows, top_k=1))

    result: dict = {"model": "smollm2-135m", "eval_windows": list(windows.shape), "threads": threads,
                    "llama_cpp_python": llama_cpp_version(), "machine": platform.machine(),
                    "cpu_count": os.cpu_count(), "note": "wall-clock timings on a shared machine (contention)",
                    "pytorch_fp32": {"perplexity": torch_ppl, "greedy_32": torch_tokens,
                                     "torch_runtime_generate_32": torch_generate}}
    with tempfile.TemporaryDirectory(prefix="gguf-bench-") as tmp:
        tmp = Path(tmp)
        log("export F32")
        f32, f32_details = export(original, tmp / "f32", "F32")
        with LlamaCppRuntime(f32, settings.max_len, settings.threads) as rt:
            cpp_tokens = rt.generate([prompt], 32)[0]
        f32_ppl, _ = perplexity_in(f32, windows, settings)
        result["f32"] = {"arch": f32_details["arch"], "size_bytes": f32_details["size_bytes"],
                         "greedy_32": cpp_tokens, "greedy_32_equal": cpp_tokens == torch_tokens,
                         "greedy_32_equal_torch_runtime_generate": cpp_tokens == torch_generate,
                         "perplexity": f32_ppl, "ppl_diff_vs_pytorch_pct": 100 * (f32_ppl / torch_ppl - 1)}
        log(f"  F32: greedy equal {cpp_tokens == torch_tokens}, ppl {f32_ppl:.4f} vs PyTorch {torch_ppl:.4f}")

        pruned = ModelHandle(copy.deepcopy(original.model), original.tokenizer, original.source)
        pruned.drop_layers(drop)
        pruned_runs: dict[str, dict] = {}
        paths = {"F32": f32}
        for t in pruned_types:
            log(f"export {t} with layers {drop} dropped")
            path, details = export(pruned, tmp / f"pruned-{t.lower()}", t)
            ppl, _ = perplexity_in(path, windows, settings)
            pruned_runs[t] = {"size_bytes": details["size_bytes"], "perplexity": ppl}
            paths[f"{t} pruned"] = path
        del pruned

        quant: dict[str, dict] = {}
        for t in types:
            log(f"export {t}")
            path, details = export(original, tmp / t.lower(), t)
            ppl, _ = perplexity_in(path, windows, settings)
            quant[t] = {"size_bytes": details["size_bytes"], "perplexity": ppl,
                        "ppl_change_vs_f32_pct": 100 * (ppl / f32_ppl - 1),
                        "tensor_types": details["tensor_types"], "fallback_tensors": len(details["fallback_tensors"]),
                        "export_s": round(details["export_s"], 1)}
            paths[t] = path
        log(f"timing {list(paths)} alternately, {args.rounds} rounds")
        latency = timed_alternately(paths, args, settings)

    base = latency["F32"]["decode_tok_s_median"]
    result["depth_pruned"] = {"dropped": drop, "layers": 30 - len(drop)}
    for t, run in pruned_runs.items():
        full = latency[t]
        mine = latency[f"{t} pruned"]
        run["decode_speedup_vs_unpruned_same_type"] = mine["decode_tok_s_median"] / full["decode_tok_s_median"]
        run["prefill_speedup_vs_unpruned_same_type"] = full["prefill_s_median"] / mine["prefill_s_median"]
        result["depth_pruned"][t] = run
    result["quant"] = quant
    result["latency"] = latency

    print(f"PyTorch fp32 perplexity {torch_ppl:.4f}; llama.cpp F32 {f32_ppl:.4f} "
          f"({result['f32']['ppl_diff_vs_pytorch_pct']:+.3f}%); first 32 greedy tokens equal: "
          f"{result['f32']['greedy_32_equal']}")
    for t, run in pruned_runs.items():
        print(f"{len(drop)} of 30 layers dropped, {t}: decode {run['decode_speedup_vs_unpruned_same_type']:.3f}x, "
              f"prefill {run['prefill_speedup_vs_unpruned_same_type']:.3f}x the unpruned {t} export")
    rows = [("F32", result["f32"]["size_bytes"], f32_ppl, "F32")]
    rows += [(t, q["size_bytes"], q["perplexity"], t) for t, q in quant.items()]
    rows += [(f"{t} -{len(drop)} layers", r["size_bytes"], r["perplexity"], f"{t} pruned")
             for t, r in pruned_runs.items()]
    print(f"{'export':<18}{'MB':>8}{'ppl':>10}{'ppl vs F32':>12}{'decode tok/s':>14}{'vs F32':>8}{'prefill s':>11}")
    for label, size, ppl, key in rows:
        lat = latency[key]
        print(f"{label:<18}{size / 1e6:>8.1f}{ppl:>10.3f}{100 * (ppl / f32_ppl - 1):>+11.2f}%"
              f"{lat['decode_tok_s_median']:>14.1f}{lat['decode_tok_s_median'] / base:>7.2f}x"
              f"{lat['prefill_s_median']:>11.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
