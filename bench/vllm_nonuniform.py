"""SmolLM2-135M with a different FFN width per layer, exported as DeciLM and run in vLLM.

In one run:
1. the FFN of layers 1-28 is cut to a per-layer width (keeping the first neurons; quality does
   not matter here) and the model is exported by the `vllm` exporter in float32 (DeciLM);
2. vLLM loads it; its first greedy tokens are compared with PyTorch float32 on the same model;
3. unless --no-baseline, the speed-up over the unpruned model exported as stock Llama, timed
   exactly as the verify gate times a pair (bench/gate_pair.py): both engines in worker processes,
   warmed up, interleaved rounds with the idle one suspended, a 95% bootstrap interval.

    .venv/bin/python bench/vllm_nonuniform.py [--no-baseline] [--new-tokens 16] [--rounds 10]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gate_pair import gate_pair, host, ratio_line  # noqa: E402

from compressor.api import RuntimeSettings  # noqa: E402
from compressor.model import ModelHandle  # noqa: E402
from compressor.runtime_process import open_isolated  # noqa: E402
from compressor.model_loading import load_model  # noqa: E402
from compressor.torch_runtime import TorchRuntime  # noqa: E402
from compressor_exporters.vllm import VllmExporter, VllmOptions  # noqa: E402
from compressor_exporters.vllm.exporter import vllm_version  # noqa: E402
from compressor_methods._width import keep_mlp_neurons  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "vllm_nonuniform.json"
PROMPTS = ["The capital of France is", "To be, or not to be, that is", "Once upon a time"]
WIDTH_CYCLE = (1024, 768, 512)  # layers 1..28 cycle through these; layers 0 and 29 keep 1536


def parse_args() -> argparse.Namespace:
    """Command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--new-tokens", type=int, default=16, help="greedy tokens compared with PyTorch")
    p.add_argument("--must-match", type=int, default=8, help="leading greedy tokens that must be identical")
    p.add_argument("--prompt-tokens", type=int, default=64, help="latency: prompt length")
    p.add_argument("--latency-new", type=int, default=32, help="latency: generated tokens")
    p.add_argument("--rounds", type=int, default=10, help="interleaved timing rounds")
    p.add_argument("--no-baseline", action="store_true", help="skip the unpruned stock-Llama engine")
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args()


def per_layer_widths(layers: int, full: int) -> list[int]:
    """The FFN width of every layer: full at both ends, cycling through WIDTH_CYCLE in between."""
    return [full if i in (0, layers - 1) else WIDTH_CYCLE[(i - 1) % len(WIDTH_CYCLE)] for i in range(layers)]


OPTIONS = VllmOptions(dtype="float32", start_timeout_s=900, kv_cache_space_gib=1)


def open_vllm(artifact: Path) -> tuple[Any, float]:
    """Start a float32 vLLM engine on ``artifact`` in a worker process (as verify does); return it and its start time."""
    t0 = time.perf_counter()
    rt = open_isolated(VllmExporter(), artifact, OPTIONS, RuntimeSettings(device="cpu", max_len=512))
    return rt, time.perf_counter() - t0


def main() -> int:
    """Run the benchmark, print a table and JSON, write JSON to bench/results."""
    args = parse_args()
    t0 = time.perf_counter()
    original = load_model("smollm2-135m")
    load_s = time.perf_counter() - t0
    model = ModelHandle(copy.deepcopy(original.model), original.tokenizer, original.source)
    full = model.layer_spec(0).intermediate_size
    widths = per_layer_widths(model.num_layers, full)
    for i, w in enumerate(widths):
        if w != full:
            keep_mlp_neurons(model.layers[i].mlp, torch.arange(w))
    prompt_ids = [list(model.tokenizer(p)["input_ids"]) for p in PROMPTS]
    result: dict = {"model": "smollm2-135m", "ffn_widths": widths, "dtype": "float32",
                    "parameters_original": original.num_parameters(), "parameters_pruned": model.num_parameters(),
                    "vllm": vllm_version(), "torch": torch.__version__, "machine": platform.machine(),
                    "load_model_s": round(load_s, 2), "host": host(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    with tempfile.TemporaryDirectory(prefix="vllm-nonuniform-") as tmp:
        art = Path(tmp) / "decilm"
        art.mkdir()
        ex, opts = VllmExporter(), OPTIONS
        t0 = time.perf_counter()
        ex.check_model(model, opts)
        details = ex.export(model, art, opts)
        result["export_s"] = round(time.perf_counter() - t0, 2)
        result["export_format"] = details.get("format", "stock llama")
        result["weight_bytes"] = details["weight_bytes"]
        t0 = time.perf_counter()
        want = TorchRuntime(model.model).generate(prompt_ids, args.new_tokens)
        result["pytorch_generate_s"] = round(time.perf_counter() - t0, 2)
        rt, start_s = open_vllm(art)
        with rt:
            t0 = time.perf_counter()
            got = rt.generate(prompt_ids, args.new_tokens)
            result["vllm_generate_s"] = round(time.perf_counter() - t0, 2)
            result["vllm_start_s"] = round(start_s, 1)
        result["greedy"] = [{"prompt": p, "vllm": g, "pytorch": w,
                             "leading_equal": next((i for i, (a, b) in enumerate(zip(g, w)) if a != b), len(g))}
                            for p, g, w in zip(PROMPTS, got, want)]
        result["greedy_first_match"] = all(r["leading_equal"] >= args.must_match for r in result["greedy"])
        if not args.no_baseline:
            base = Path(tmp) / "stock"
            base.mkdir()
            ex.export(original, base, opts)
            gate = gate_pair(ex, opts, base, opts, art, rounds=args.rounds, prompt_tokens=args.prompt_tokens,
                             new_tokens=args.latency_new, max_len=512)
            result["gate"] = gate
            result["decode_speedup"], result["prefill_speedup"] = gate["decode_speedup"], gate["prefill_speedup"]
            result["latency_decilm"], result["latency_stock_unpruned"] = gate["b"]["latency"], gate["a"]["latency"]
            print(ratio_line("per-layer widths vs stock", gate), flush=True)
    print(f"{'step':<34}{'value':>20}")
    for key in ("load_model_s", "export_s", "weight_bytes", "pytorch_generate_s", "vllm_start_s", "vllm_generate_s",
                "parameters_original", "parameters_pruned"):
        print(f"{key:<34}{result[key]:>20}")
    for r in result["greedy"]:
        print(f"greedy {r['prompt'][:24]!r:<30} first {r['leading_equal']:>2}/{args.new_tokens} tokens equal")
    for key in ("latency_decilm", "latency_stock_unpruned"):
        if key in result:
            print(key, json.dumps(result[key]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result.get(k) for k in ("greedy_first_match", "export_format", "decode_speedup",
                                                  "prefill_speedup")}))
    return 0 if result["greedy_first_match"] else 1


if __name__ == "__main__":
    sys.exit(main())
