"""The verify gate: measure original and compressed artifacts in the same runtime, then apply budgets."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compressor.api import Exporter, RuntimeSettings
from compressor.errors import CompressorError, RuntimeUnavailableError
from compressor.metrics import greedy_match, perplexity_from_scores, summarize_latency, top1_agreement, topk_kl
from compressor.recipe import Budgets, VerifySpec
from compressor.resources import dir_size

ARTIFACT_FILE = "compressor-artifact.json"


@dataclass
class BudgetResult:
    """One budget: its limit, the measured value and whether it passed."""

    name: str
    limit: float
    value: float | None
    passed: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable view."""
        return asdict(self)


def measure_runtime(exporter: Exporter, artifact: Path, options: Any, windows: np.ndarray,
                    prompts: list[list[int]], spec: VerifySpec, settings: RuntimeSettings,
                    log: Callable[[str], None]) -> dict[str, Any]:
    """Open one artifact in its runtime and take every measurement verify needs."""
    try:
        runtime = exporter.open_runtime(artifact, options, settings)
    except CompressorError:
        raise
    except Exception as exc:
        raise RuntimeUnavailableError(f"{exporter.runtime_name or exporter.name} could not load {artifact}: "
                                      f"{type(exc).__name__}: {exc}") from exc
    with runtime:
        log(f"  scoring {len(windows)} windows")
        scores = runtime.score(windows, spec.top_k)
        log(f"  generating {len(prompts)} prompts x {spec.generate_tokens} tokens")
        generations = runtime.generate(prompts, spec.generate_tokens)
        lat = spec.latency
        log(f"  timing prefill {lat.prompt_tokens} + decode {lat.new_tokens} tokens, {lat.repeats} repeats")
        latency = runtime.latency(lat.prompt_tokens, lat.new_tokens, lat.repeats, lat.warmup)
        info = runtime.describe()
    return {"scores": scores, "generations": generations, "latency": summarize_latency(latency),
            "latency_samples": asdict(latency), "runtime": info, "size_bytes": dir_size(artifact)}


def compare(reference: dict[str, Any], candidate: dict[str, Any]) -> dict[str, Any]:
    """Compute the verify metrics of a candidate against the reference measurements."""
    ppl_ref = perplexity_from_scores(reference["scores"])
    ppl = perplexity_from_scores(candidate["scores"])
    lat_ref, lat = reference["latency"], candidate["latency"]
    gm = greedy_match(reference["generations"], candidate["generations"])
    return {
        "perplexity_original": ppl_ref, "perplexity": ppl,
        "ppl_increase_pct": 100.0 * (ppl / ppl_ref - 1.0),
        "top1_agreement": top1_agreement(reference["scores"], candidate["scores"]),
        "kl": topk_kl(reference["scores"], candidate["scores"]),
        "greedy_prefix_match": gm["prefix_match"], "greedy_exact_match": gm["exact_match"],
        "latency_original": lat_ref, "latency": lat,
        "decode_speedup": lat["decode_tok_s_median"] / lat_ref["decode_tok_s_median"],
        "prefill_speedup": lat["prefill_tok_s_median"] / lat_ref["prefill_tok_s_median"],
        "size_bytes_original": reference["size_bytes"], "size_bytes": candidate["size_bytes"],
        "size_ratio": candidate["size_bytes"] / max(reference["size_bytes"], 1),
        "runtime": candidate["runtime"],
    }


def verify_against_original(exporter: Exporter, options: Any, artifact: Path, reference_dir: Path,
                            windows: np.ndarray, prompts: list[list[int]], spec: VerifySpec,
                            settings: RuntimeSettings, log: Callable[[str], None]) -> dict[str, Any]:
    """Measure the reference export (already written to ``reference_dir``) and the artifact; apply budgets."""
    name = exporter.runtime_name or exporter.name
    log(f"measuring the original model in {name}")
    ref = measure_runtime(exporter, reference_dir, options, windows, prompts, spec, settings, log)
    log(f"measuring the compressed model in {name}")
    cand = measure_runtime(exporter, artifact, options, windows, prompts, spec, settings, log)
    metrics = compare(ref, cand)
    metrics["runtime_original"] = ref["runtime"]
    budgets = check_budgets(metrics, spec.budgets)
    return {"metrics": metrics, "budgets": [b.to_dict() for b in budgets], "passed": all(b.passed for b in budgets)}


# budget field -> (metric key, "max" or "min", how to print)
BUDGET_METRICS: dict[str, tuple[str, str, str]] = {
    "max_ppl_increase_pct": ("ppl_increase_pct", "max", "{:.2f}%"),
    "min_top1_agreement": ("top1_agreement", "min", "{:.4f}"),
    "max_kl": ("kl", "max", "{:.4f}"),
    "min_greedy_match": ("greedy_prefix_match", "min", "{:.3f}"),
    "min_speedup": ("decode_speedup", "min", "{:.3f}x"),
    "min_prefill_speedup": ("prefill_speedup", "min", "{:.3f}x"),
    "max_size_ratio": ("size_ratio", "max", "{:.3f}"),
}


def check_budgets(metrics: dict[str, Any], budgets: Budgets) -> list[BudgetResult]:
    """Apply every set budget to the metrics; a failed one says by how much it missed."""
    results = []
    for field, (key, kind, fmt) in BUDGET_METRICS.items():
        limit = getattr(budgets, field)
        if limit is None:
            continue
        value = metrics.get(key)
        if value is None or not np.isfinite(value):
            results.append(BudgetResult(field, limit, None, False, f"{key} could not be measured"))
            continue
        passed = value <= limit if kind == "max" else value >= limit
        sign = "<=" if kind == "max" else ">="
        detail = f"{key} = {fmt.format(value)} (needs {sign} {fmt.format(limit)})"
        if not passed:
            detail += f"; missed by {fmt.format(abs(value - limit))}"
        results.append(BudgetResult(field, limit, float(value), passed, detail))
    return results


def write_artifact_info(dest: Path, info: dict[str, Any]) -> None:
    """Record what an export directory holds, so that `compress verify` can reopen it."""
    (dest / ARTIFACT_FILE).write_text(json.dumps(info, indent=2, default=str))


def read_artifact_info(artifact: Path) -> dict[str, Any]:
    """Read an export directory's record, or raise a clear error."""
    from compressor.errors import InputError

    path = Path(artifact) / ARTIFACT_FILE
    if not path.is_file():
        raise InputError(f"{artifact} is not a compressor artifact (no {ARTIFACT_FILE})",
                         hint="pass one export subdirectory of a `compress build` output, or give --format")
    return json.loads(path.read_text())
