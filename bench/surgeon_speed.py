"""Delivered speed of a structured LLM Surgeon model in ONNX Runtime and llama.cpp, against the dense model.

Takes the per-layer-size model that ``bench/surgeon_quality.py --save-structured DIR`` wrote (DeciLM
form; compressor loads it back without running code from the directory), exports it and the dense
SmolLM2 as ONNX (fp32) and GGUF (F32), and times each pair exactly as the verify gate does
(bench/gate_pair.py: worker processes, interleaved rounds with the idle one suspended, 95%
bootstrap intervals).

    .venv/bin/python bench/surgeon_speed.py --model DIR [--rounds 10] [--threads 2]

Writes bench/results/surgeon_speed.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gate_pair import export_to, gate_pair, host, ratio_line  # noqa: E402

from compressor.model_loading import load_model  # noqa: E402
from compressor_exporters.gguf import GgufExporter, GgufOptions  # noqa: E402
from compressor_exporters.onnx import OnnxExporter, OnnxOptions  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    """Export both models to both runtimes, time each pair and write JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="the structured model directory (DeciLM form)")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "surgeon_speed.json")
    args = p.parse_args()
    dense, pruned = load_model("smollm2-135m", hash_files=False), load_model(str(args.model), hash_files=False)
    result: dict = {"model": str(args.model), "threads": args.threads, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                    "host": host(), "rounds": args.rounds,
                    "parameters": {"dense": dense.num_parameters(), "pruned": pruned.num_parameters()},
                    "ffn_widths": [s.intermediate_size for s in pruned.layer_specs()]}
    with tempfile.TemporaryDirectory(prefix="surgeon-speed-") as tmp:
        for runtime, ex, opts in (("onnx", OnnxExporter(), OnnxOptions()),
                                  ("gguf", GgufExporter(), GgufOptions(outtype="F32"))):
            dirs = [export_to(ex, opts, model, Path(tmp) / f"{runtime}-{name}")
                    for name, model in (("dense", dense), ("pruned", pruned))]
            r = gate_pair(ex, opts, dirs[0], opts, dirs[1], rounds=args.rounds, prompt_tokens=args.prompt_tokens,
                          new_tokens=args.new_tokens, threads=args.threads)
            result[runtime] = r
            print(ratio_line(runtime, r) + f"; decode {r['a']['latency']['decode_tok_s_median']:.1f} -> "
                  f"{r['b']['latency']['decode_tok_s_median']:.1f} tok/s", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
