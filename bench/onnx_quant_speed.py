"""SmolLM2-135M in ONNX Runtime: int8 and int4 graphs against the fp32 graph, timed exactly as the gate times them.

The fp32 graph is written by the `onnx` exporter (validated against PyTorch at export); each quantized
graph by the exporter's own quantization step on it (``quantize_artifact``, what an export with
``quantize`` runs, including its logits check). Each pair (fp32, variant) goes through
:func:`gate_pair.gate_pair`: both in worker processes, scored on the first ``--eval-windows`` windows of
the built-in Shakespeare eval set (Hamlet, 512 tokens), then timed in interleaved rounds with the idle
one suspended, the speed-ups with the gate's 95% bootstrap interval.

    .venv/bin/python bench/onnx_quant_speed.py [--rounds 8] [--eval-windows 8] [--threads N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gate_pair import export_to, gate_pair, ratio_line, save_results  # noqa: E402

from compressor.data import load_windows  # noqa: E402
from compressor.model_loading import load_model  # noqa: E402
from compressor_exporters.onnx import OnnxExporter, OnnxOptions  # noqa: E402
from compressor_exporters.onnx.exporter import quantize_artifact  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "onnx_quant_speed.json"
VARIANTS = {"int8": OnnxOptions(quantize="int8"),
            "int4-b32": OnnxOptions(quantize="int4", int4_block_size=32),
            "int4-b128": OnnxOptions(quantize="int4", int4_block_size=128)}


def main() -> None:
    """Export, quantize, time each pair, write the JSON and print one line per variant."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--eval-windows", type=int, default=8)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()

    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    ex, fp32 = OnnxExporter(), OnnxOptions()
    results = {}
    with tempfile.TemporaryDirectory(prefix="onnx-quant-speed-") as tmp:
        model = load_model("smollm2-135m")
        windows = load_windows("shakespeare", "evaluation", model.tokenizer, args.eval_windows, 512, seed=0)
        base = export_to(ex, fp32, model, Path(tmp) / "fp32")
        del model
        for name, opts in VARIANTS.items():
            dest = Path(tmp) / name
            dest.mkdir()
            details = quantize_artifact(base, dest, opts)
            r = gate_pair(ex, fp32, base, opts, dest, rounds=args.rounds, prompt_tokens=args.prompt_tokens,
                          new_tokens=args.new_tokens, windows=windows, threads=args.threads)
            r["quantization"] = {k: v for k, v in details.items() if isinstance(v, (int, float, str, bool))}
            results[name] = r
            print(ratio_line(name, r) + f"; perplexity {r['a']['perplexity']:.2f} -> {r['b']['perplexity']:.2f} "
                  f"({r['perplexity_change_pct']:+.1f}%)", flush=True)
    save_results(args.out, started, args, results, eval_windows=args.eval_windows)


if __name__ == "__main__":
    main()
