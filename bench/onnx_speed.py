"""SmolLM2-135M in ONNX Runtime: unpruned vs 25% of its layers dropped, and int8/int4 against fp32.

Every graph is written by the `onnx` exporter (validated against PyTorch at export) or, for the
quantized variants, by the exporter's own quantization step applied to the unpruned fp32 graph
(``quantize_artifact``: the same code an `onnx` export with ``quantize`` runs, without exporting
the model a second time). All sessions are open at once and timed round-robin, one
latency sample per variant per round, so that a drift in background load hits every variant
alike. Perplexity is measured in ONNX Runtime on the first ``--eval-windows`` windows of
../shared/data/smollm2-shakespeare/eval.npy (Hamlet, 512 tokens each). The dropped block
(layers 21-28, as in bench/vllm_speed.py) is chosen for speed, not quality: without a layer
selection method or healing, the pruned model's perplexity explodes (PyTorch agrees: the export
validates against it), so only its speed and size figures are meaningful here.

    .venv/bin/python bench/onnx_speed.py [--drop 21,...,28] [--rounds 5] [--eval-windows 8] [--threads N]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from compressor.api import LatencySamples
from compressor.metrics import summarize_latency
from compressor.model import ModelHandle
from compressor.model_loading import load_model
from compressor.resources import dir_size
from compressor_exporters.onnx import OnnxExporter, OnnxOptions
from compressor_exporters.onnx.exporter import quantize_artifact
from compressor_exporters.onnx.io_spec import IO_FILE
from compressor_exporters.onnx.runtime import OnnxRuntime

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "onnx_speed.json"
EVAL = REPO.parent / "shared" / "data" / "smollm2-shakespeare" / "eval.npy"
DEFAULT_DROP = list(range(21, 29))  # 8 of 30 layers (the same block as bench/vllm_speed.py)
QUANT_VARIANTS = {"int8": OnnxOptions(quantize="int8"),
                  "int4-b32": OnnxOptions(quantize="int4", int4_block_size=32),
                  "int4-b128": OnnxOptions(quantize="int4", int4_block_size=128)}


def parse_args() -> argparse.Namespace:
    """Command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--drop", default=",".join(map(str, DEFAULT_DROP)), help="comma-separated layer indices to drop")
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5, help="timed latency samples per variant")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--eval-windows", type=int, default=8)
    p.add_argument("--threads", type=int, default=None, help="ORT intra-op threads (default: ORT's choice)")
    p.add_argument("--no-quant", action="store_true", help="only compare unpruned and pruned fp32")
    p.add_argument("--workdir", type=Path, default=None, help="keep the exported graphs here")
    p.add_argument("--reuse", action="store_true", help="reuse fp32 graphs already in --workdir")
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args()


def export(model: ModelHandle, dest: Path, log: list[str], reuse: bool) -> dict:
    """Export with the onnx exporter (validated against PyTorch), timing it; with ``reuse`` keep an earlier one."""
    if reuse and (dest / IO_FILE).is_file():
        log.append(f"reused {dest}")
        return {}
    ex = OnnxExporter()
    opts = OnnxOptions()
    ex.check_model(model, opts)
    t0 = time.perf_counter()
    details = ex.export(model, dest, opts)
    log.append(f"exported {dest.name}: {model.num_layers} layers in {time.perf_counter() - t0:.0f} s, "
               f"max |onnx-torch| {details['validation']['max_abs_diff']:.2e}")
    print(log[-1], flush=True)
    return details


def perplexity(runtime: OnnxRuntime, windows: np.ndarray) -> float:
    """exp(mean next-token NLL) over every predicted position of ``windows``."""
    scores = runtime.score(windows, top_k=1)
    return float(np.exp(-scores.target_logprobs.astype(np.float64).mean()))


def main() -> None:
    """Export, time round-robin, score, print a table and write JSON."""
    args = parse_args()
    drop = [int(i) for i in args.drop.split(",") if i.strip()]
    windows = np.load(EVAL)[:args.eval_windows]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="onnx-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    log: list[str] = []
    base = load_model("smollm2-135m")
    pruned = ModelHandle(copy.deepcopy(base.model), base.tokenizer, base.source)
    pruned.drop_layers(drop)
    details = {"fp32": export(base, work / "fp32", log, args.reuse),
               "fp32-pruned": export(pruned, work / "fp32-pruned", log, args.reuse)}
    del pruned
    variants = ["fp32", "fp32-pruned"]
    if not args.no_quant:
        for name, opts in QUANT_VARIANTS.items():
            t0 = time.perf_counter()
            details[name] = quantize_artifact(work / "fp32", work / name, opts)
            log.append(f"quantized {name} in {time.perf_counter() - t0:.0f} s, mean logit cosine vs fp32 "
                       f"{details[name]['quantized_validation']['mean_cosine']:.4f}")
            print(log[-1], flush=True)
            variants.append(name)

    runtimes = {v: OnnxRuntime(work / v, threads=args.threads) for v in variants}
    samples = {v: LatencySamples([], [], args.prompt_tokens, args.new_tokens) for v in variants}
    for v in variants:  # warm-up: first runs allocate arenas and pre-pack weights
        runtimes[v].latency(args.prompt_tokens, args.new_tokens, repeats=args.warmup, warmup=0)
    for r in range(args.rounds):
        for v in variants:
            s = runtimes[v].latency(args.prompt_tokens, args.new_tokens, repeats=1, warmup=0)
            samples[v].prefill_s += s.prefill_s
            samples[v].decode_tok_s += s.decode_tok_s
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(
            f"{v} {samples[v].decode_tok_s[-1]:.1f} tok/s" for v in variants), flush=True)

    rows = {}
    for v in variants:
        t0 = time.perf_counter()
        ppl = perplexity(runtimes[v], windows)
        rows[v] = {**summarize_latency(samples[v]), "perplexity": ppl, "score_seconds": time.perf_counter() - t0,
                   "artifact_bytes": dir_size(work / v), "layers": runtimes[v].io.num_layers,
                   "decode_tok_s_samples": samples[v].decode_tok_s, "prefill_s_samples": samples[v].prefill_s}
    ref = rows["fp32"]
    for v, row in rows.items():
        row["decode_speedup"] = row["decode_tok_s_median"] / ref["decode_tok_s_median"]
        row["prefill_speedup"] = ref["prefill_s_median"] / row["prefill_s_median"]
        row["size_ratio"] = row["artifact_bytes"] / ref["artifact_bytes"]
        row["ppl_change_pct"] = 100.0 * (row["perplexity"] / ref["perplexity"] - 1.0)

    describe = runtimes["fp32"].describe()
    result = {
        "bench": "onnx_speed", "model": "smollm2-135m (30 layers)", "dropped_layers": drop,
        "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens, "rounds": args.rounds,
        "eval": f"{len(windows)} windows x {windows.shape[1]} tokens of {EVAL.name} (Hamlet)",
        "runtime": describe, "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                         "load_average_at_end": os.getloadavg()},
        "note": "timings taken under whatever background load the machine had; variants were timed "
                "round-robin so a load drift affects all of them",
        "log": log, "variants": rows,
        "quantization": {v: details[v]["quantization"] for v in variants if "quantization" in details[v]},
        "quantized_agreement": {v: details[v]["quantized_validation"] for v in variants
                                if "quantized_validation" in details[v]},
    }
    for r in runtimes.values():
        r.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"\nONNX Runtime {describe['onnxruntime']} on {os.cpu_count()} CPUs; prompt {args.prompt_tokens}, "
          f"decode {args.new_tokens} tokens, {args.rounds} rounds; perplexity on {len(windows)} Hamlet windows")
    print(f"{'variant':<12} {'layers':>6} {'decode tok/s':>12} {'x fp32':>7} {'prefill s':>9} {'x fp32':>7} "
          f"{'MB':>7} {'size':>6} {'ppl':>8} {'ppl %':>7}")
    for v, row in rows.items():
        print(f"{v:<12} {row['layers']:>6} {row['decode_tok_s_median']:>12.1f} {row['decode_speedup']:>7.2f} "
              f"{row['prefill_s_median']:>9.3f} {row['prefill_speedup']:>7.2f} {row['artifact_bytes'] / 1e6:>7.1f} "
              f"{row['size_ratio']:>6.2f} {row['perplexity']:>8.2f} {row['ppl_change_pct']:>+7.1f}")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
