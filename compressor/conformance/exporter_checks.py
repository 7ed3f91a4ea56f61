"""What every exporter plugin must do, checked on a tiny Llama 3 model in the exporter's own runtime.

An :class:`ExportRun` exports the model once (at the exporter's full-precision reference options)
into an empty directory and opens the artifact in a runtime worker process, as verify does. Each
``check_*`` function judges one rule and raises :class:`compressor.conformance.ConformanceError`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compressor.api import Exporter, Kind, ModelHandle, RuntimeSettings, TorchRuntime
from compressor.conformance import ConformanceError

SCORE_TOLERANCE = 0.1  # max |log p| difference from transformers: a wrong tensor moves it by far more
NEW_TOKENS = 5


def model_fingerprint(model: ModelHandle) -> str:
    """SHA-256 over every tensor's name, shape, dtype and bytes, and the config: a change anywhere shows."""
    h = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
    for name, t in sorted(model.model.state_dict().items()):
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass
class ExportRun:
    """One export of a tiny model and what the export left behind."""

    exporter: Exporter
    options: Any
    model: ModelHandle
    dest: Path
    fingerprint_before: str
    fingerprint_after: str
    outside: list[str]
    details: Any = None
    error: BaseException | None = None


def run_export(cls: type[Exporter], raw_options: dict[str, Any], model: ModelHandle, root: Path) -> ExportRun:
    """Export ``model`` with ``cls`` into the empty ``root / 'artifact'``; record what changed around it."""
    exporter = cls()
    options = exporter.reference_options(cls.Options.model_validate(raw_options))
    dest = root / "artifact"
    dest.mkdir(parents=True)
    before_files = {p for p in root.rglob("*")}
    before = model_fingerprint(model)
    run = ExportRun(exporter, options, model, dest, before, before, [])
    try:
        exporter.check_model(model, options)
        run.details = exporter.export(model, dest, options)
    except Exception as exc:
        run.error = exc
    run.fingerprint_after = model_fingerprint(model)
    run.outside = sorted(str(p.relative_to(root)) for p in root.rglob("*")
                         if p not in before_files and dest not in p.parents and p != dest)
    return run


def _succeeded(run: ExportRun) -> None:
    if run.error is not None:
        raise ConformanceError(f"{run.exporter.name} could not export a tiny Llama: "
                               f"{type(run.error).__name__}: {run.error}")


def check_exports_into_its_directory(run: ExportRun) -> None:
    """export writes into the empty directory it is given, and nowhere else beside it."""
    _succeeded(run)
    if not any(run.dest.iterdir()):
        raise ConformanceError(f"{run.exporter.name}: export left its directory empty")
    if run.outside:
        raise ConformanceError(f"{run.exporter.name}: export wrote outside its directory: {', '.join(run.outside)}")


def check_model_unchanged(run: ExportRun) -> None:
    """Exporting must never change the model in memory (the next export and verify use it)."""
    _succeeded(run)
    if run.fingerprint_after != run.fingerprint_before:
        raise ConformanceError(f"{run.exporter.name}: export changed the model in memory (weights, dtypes or "
                               "config); work on a copy")


def check_benefits_cover_every_kind(cls: type[Exporter]) -> None:
    """benefits(options) must say, for every Kind, whether it makes this runtime faster or smaller."""
    exporter = cls()
    options = cls.Options.model_validate({})
    missing = sorted(k.value for k in Kind if k not in exporter.benefits(options))
    if missing:
        raise ConformanceError(f"{cls.name}: benefits() says nothing about {', '.join(missing)}; the plan's "
                               "feasibility table needs every kind")


def probe_runtime(run: ExportRun, windows: np.ndarray, prompts: list[list[int]], work: Path) -> dict[str, Any]:
    """Open the artifact with the plugin's own ``open_runtime`` in a fresh process and exercise it.

    A separate process, as verify's worker: some runtimes (vLLM) start processes and threads that
    must not live in the caller. Returns what :mod:`compressor.conformance.runtime_probe` found.
    """
    import subprocess
    import sys

    _succeeded(run)
    np.save(work / "windows.npy", windows)
    cls = type(run.exporter)
    spec = {"exporter": f"{cls.__module__}:{cls.__qualname__}", "artifact": str(run.dest),
            "options": run.options.model_dump(mode="json"),
            "windows": str(work / "windows.npy"), "prompts": prompts, "new_tokens": NEW_TOKENS,
            "scores": str(work / "scores.npz"), "max_len": int(windows.shape[1]) + 32}
    (work / "probe.json").write_text(json.dumps(spec))
    settings = RuntimeSettings(device="cpu", max_len=spec["max_len"], threads=1)
    env = {**os.environ, **run.exporter.runtime_process(run.options, settings).env}  # as verify's worker gets
    # the exporter class is imported by its module path, so the caller's import path goes along
    env["PYTHONPATH"] = os.pathsep.join([p for p in sys.path if p] + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    done = subprocess.run([sys.executable, "-m", "compressor.conformance.runtime_probe", str(work / "probe.json")],
                          capture_output=True, text=True, timeout=900, env=env)
    if done.returncode != 0:
        raise ConformanceError(f"{run.exporter.name}: its runtime failed ({done.returncode}): "
                               f"{(done.stderr.strip().splitlines() or ['no output'])[-1]}")
    found = json.loads(done.stdout.strip().splitlines()[-1])
    with np.load(spec["scores"]) as z:
        found["target_logprobs"] = z["target_logprobs"]
    return found


def check_scores_match_transformers(run: ExportRun, windows: np.ndarray, probe: dict[str, Any]) -> None:
    """The runtime's next-token log-probabilities must match transformers' on the same model."""
    want = TorchRuntime(run.model.model).score(windows, 4).target_logprobs
    got = probe["target_logprobs"]
    if got.shape != want.shape:
        raise ConformanceError(f"{run.exporter.name}: score() returned shape {got.shape}, expected {want.shape}")
    diff = float(np.abs(got - want).max())
    if not diff <= SCORE_TOLERANCE:
        raise ConformanceError(f"{run.exporter.name}: its runtime's log-probabilities differ from transformers' "
                               f"by up to {diff:.3g} (tolerance {SCORE_TOLERANCE})")


def check_generates_the_asked_count(run: ExportRun, probe: dict[str, Any]) -> None:
    """generate() returns exactly max_new_tokens for every prompt (greedy, no early stop)."""
    counts = [len(t) for t in probe["tokens"]]
    if counts != [NEW_TOKENS] * len(counts) or not counts:
        raise ConformanceError(f"{run.exporter.name}: generate() returned {counts} tokens; it must return "
                               f"exactly {NEW_TOKENS} for each prompt")


def check_latency_samples(run: ExportRun, probe: dict[str, Any]) -> None:
    """latency(8, 4, repeats=2, warmup=1): two positive prefill times and decode rates, lengths echoed."""
    lat = probe["latency"]
    values = [*lat["prefill_s"], *lat["decode_tok_s"]]
    sane = (len(lat["prefill_s"]) == len(lat["decode_tok_s"]) == 2 and lat["prompt_tokens"] == 8
            and lat["new_tokens"] == 4 and all(math.isfinite(x) and x > 0 for x in values))
    if not sane:
        raise ConformanceError(f"{run.exporter.name}: latency(8, 4, repeats=2, warmup=1) returned {lat}")


def check_close_twice(run: ExportRun, probe: dict[str, Any]) -> None:
    """close() may be called again without raising (verify closes on every path)."""
    if probe.get("second_close_error"):
        raise ConformanceError(f"{run.exporter.name}: a second close() raised {probe['second_close_error']}")
