"""Peak RSS of `compress build --offload disk` on a ~6 GB synthetic Llama 3-shaped model, as a fraction of its weights.

The model (random bf16 weights, Llama 3.2's layer shape and 128k vocabulary, untied head, 40 layers,
sharded into 2 GB safetensors files with an index) is written block by block, never held whole.
Each build runs as its own `compress` process; psutil samples the RSS of it and its children.

Usage: .venv/bin/python bench/offload_build.py [--workdir DIR] [--compare] [--layers 40]
Writes bench/results/offload_build.json. Targets: wanda -> vllm < 0.35x, layer_drop -> gguf < 0.25x;
with --compare the same builds with --offload none (expected > 1x: the weights load as float32).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMPRESS = str(Path(sys.executable).with_name("compress"))
# Llama 3.2 1B's layer (hidden 2048, GQA 32:8, FFN 8192, 128k vocabulary), 40 layers, untied: ~5.9 GB in bf16
CONFIG = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=40,
              num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
              tie_word_embeddings=False, rms_norm_eps=1e-5, rope_theta=500000.0,
              rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 8192}, bos_token_id=1, eos_token_id=2)
RUNS = [("wanda", ["--method", "wanda", "--sparsity", "0.5", "--export", "vllm"], 0.35),
        ("layer_drop", ["--method", "layer_drop", "--layers", "8", "--export", "gguf"], 0.25)]
CALIB = ["--calib-samples", "8", "--calib-seq-len", "256"]


def main() -> None:
    """Write the model, run each build with and (optionally) without offload, record the peaks."""
    from compressor.testing import peak_rss, write_synthetic_llama

    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=None, help="where the model and outputs go (~20 GB)")
    parser.add_argument("--layers", type=int, default=CONFIG["num_hidden_layers"])
    parser.add_argument("--compare", action="store_true", help="also run each build with --offload none")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "offload_build.json")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="offload-build-", dir=args.workdir))
    try:
        model = root / "model"
        t0 = time.perf_counter()
        weights = write_synthetic_llama(model, **{**CONFIG, "num_hidden_layers": args.layers})
        print(f"synthetic model: {weights / 1e9:.2f} GB in {time.perf_counter() - t0:.0f} s", flush=True)
        rows = []
        modes = ["disk", "none"] if args.compare else ["disk"]
        for name, flags, target in RUNS:
            for mode in modes:
                out = root / f"out-{name}-{mode}"
                cmd = [COMPRESS, "build", "-m", str(model), *flags, *CALIB, "--no-verify", "--offload", mode,
                       "-o", str(out)]
                t0 = time.perf_counter()
                with open(root / f"{name}-{mode}.log", "w") as log:
                    rc, peak = peak_rss(cmd, env={**os.environ, "TQDM_DISABLE": "1"}, log=log)
                seconds = time.perf_counter() - t0
                row = {"build": name, "offload": mode, "exit_code": rc, "peak_rss_bytes": peak,
                       "peak_over_weights": round(peak / weights, 4), "seconds": round(seconds, 1),
                       "target_max": target if mode == "disk" else None, "command": " ".join(cmd[1:])}
                if rc != 0:
                    row["log_tail"] = (root / f"{name}-{mode}.log").read_text()[-2000:]
                else:  # compress's own per-step peaks (its sampler), to see which step sets the peak
                    usage = json.loads((out / "manifest.json").read_text())["usage"]
                    row["peak_rss_mb_by_step"] = {k: v.get("peak_rss_mb") for k, v in usage.items()}
                rows.append(row)
                print(json.dumps(row), flush=True)
                shutil.rmtree(out, ignore_errors=True)
        result = {"date": date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                  f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM",
                  "weight_bytes": weights, "config": {**CONFIG, "num_hidden_layers": args.layers}, "runs": rows}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
