"""Peak RSS of Wanda with disk offload on a ~4 GB synthetic Llama, as a fraction of the weight size.

The model is written as per-layer safetensors files by a child process (random weights, no download),
then opened lazily (every tensor stays memory-mapped on disk) and pruned layer by layer.
Usage: .venv/bin/python bench/offload_memory.py [--method wanda|sparsegpt] [--samples 4] [--seqlen 256]
Writes bench/results/offload_memory.json. Target: peak RSS < 35% of the weight size.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# TinyLlama-1.1B's shape: about 1.1 G parameters, 4.4 GB in fp32
CONFIG = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
              num_attention_heads=32, num_key_value_heads=4, head_dim=64, max_position_embeddings=2048,
              tie_word_embeddings=False, rms_norm_eps=1e-5)


def build(dest: Path) -> None:
    """Write the synthetic model one module at a time, so the builder itself never holds it all."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**CONFIG)
    config.save_pretrained(dest)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    g = torch.Generator().manual_seed(0)
    groups: dict[str, list[tuple[str, torch.Size]]] = {}
    for name, p in model.named_parameters():
        key = ".".join(name.split(".")[:3]) if name.startswith("model.layers.") else name.rsplit(".", 1)[0]
        groups.setdefault(key, []).append((name, p.shape))
    for key, params in groups.items():
        tensors = {name: torch.ones(shape) if len(shape) == 1 else torch.randn(shape, generator=g) * 0.02
                   for name, shape in params}
        save_file(tensors, str(dest / f"{key}.safetensors"))


def measure_run(src: Path, method: str, samples: int, seqlen: int) -> dict[str, float]:
    """Prune the lazily opened model with offload and return peak RSS figures."""
    import numpy as np
    import torch

    from compressor.api import StageContext
    from compressor.calibration import open_lazy
    from compressor.resources import dir_size, measure
    from compressor.resources import _tree_rss  # noqa: PLC2701 - same sampler as the stage reports
    from compressor_methods.sparsegpt import SparseGPT
    from compressor_methods.wanda import Wanda

    torch.set_num_threads(2)
    weights = dir_size(src)
    ids = np.random.default_rng(0).integers(0, CONFIG["vocab_size"], (samples, seqlen), dtype=np.int64)
    baseline = _tree_rss()
    with tempfile.TemporaryDirectory() as work:
        handle = open_lazy(src, workdir=Path(work))
        ctx = StageContext(calibration_loader=lambda: ids, log=lambda s: print(s, file=sys.stderr))
        cls = {"wanda": Wanda, "sparsegpt": SparseGPT}[method]
        with measure() as usage:
            details = cls().apply(handle, cls.Options(sparsity=0.5, offload=True), ctx)
    peak = usage.peak_rss_mb * 2**20
    return {"method": method, "weight_bytes": weights, "baseline_rss_mb": round(baseline / 2**20, 1),
            "peak_rss_mb": round(usage.peak_rss_mb, 1), "peak_over_weights": round(peak / weights, 4),
            "seconds": round(usage.seconds, 1), "achieved_sparsity": details["achieved_sparsity"],
            "samples": samples, "seqlen": seqlen, "target_max": 0.35}


def main() -> None:
    """Build the model in a child process, then measure the offloaded run here."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--method", default="wanda", choices=["wanda", "sparsegpt"])
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--build", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "offload_memory.json")
    args = parser.parse_args()
    if args.build:
        build(args.build)
        return
    with tempfile.TemporaryDirectory(prefix="offload-bench-") as tmp:
        src = Path(tmp) / "model"
        src.mkdir()
        subprocess.run([sys.executable, __file__, "--build", str(src)], check=True)
        result = measure_run(src, args.method, args.samples, args.seqlen)
    print(f"weights {result['weight_bytes'] / 2**30:.2f} GiB, peak RSS {result['peak_rss_mb']:.0f} MiB "
          f"(baseline {result['baseline_rss_mb']:.0f} MiB): ratio {result['peak_over_weights']:.3f} (target < 0.35)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
