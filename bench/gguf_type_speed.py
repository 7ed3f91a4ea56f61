"""SmolLM2-135M in llama.cpp: F16, Q8_0 and Q4_K_M files against the F32 file, timed exactly as the gate times them.

Every file is written by the `gguf` exporter. Each pair (F32, type) goes through
:func:`gate_pair.gate_pair`: both in worker processes, scored on the first ``--eval-windows`` windows
of the built-in Shakespeare eval set (Hamlet, 512 tokens), then timed in interleaved rounds with the
idle one suspended, the speed-ups with the gate's 95% bootstrap interval.

    .venv/bin/python bench/gguf_type_speed.py [--types F16,Q8_0,Q4_K_M] [--rounds 10] [--eval-windows 4]
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
from compressor_exporters.gguf import GgufExporter, GgufOptions  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "gguf_type_speed.json"


def main() -> None:
    """Export each type, time each pair against F32, write the JSON and print one line per type."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--types", default="F16,Q8_0,Q4_K_M")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--eval-windows", type=int, default=4)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()

    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    ex = GgufExporter()
    model = load_model("smollm2-135m")
    windows = load_windows("shakespeare", "evaluation", model.tokenizer, args.eval_windows, 512, seed=0)
    results = {}
    with tempfile.TemporaryDirectory(prefix="gguf-type-speed-") as tmp:
        base_opts = GgufOptions(outtype="F32")
        base = export_to(ex, base_opts, model, Path(tmp) / "F32")
        for outtype in args.types.split(","):
            opts = GgufOptions(outtype=outtype)
            dest = export_to(ex, opts, model, Path(tmp) / outtype)
            r = gate_pair(ex, base_opts, base, opts, dest, rounds=args.rounds, prompt_tokens=args.prompt_tokens,
                          new_tokens=args.new_tokens, windows=windows, threads=args.threads)
            results[outtype] = r
            print(ratio_line(outtype, r) + f"; decode {r['a']['latency']['decode_tok_s_median']:.1f} -> "
                  f"{r['b']['latency']['decode_tok_s_median']:.1f} tok/s; perplexity {r['a']['perplexity']:.2f} -> "
                  f"{r['b']['perplexity']:.2f} ({r['perplexity_change_pct']:+.2f}%)", flush=True)
    save_results(args.out, started, args, results, eval_windows=args.eval_windows)


if __name__ == "__main__":
    main()
