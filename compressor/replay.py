"""`compress build --replay manifest.json`: rebuild what a manifest records and compare the result with it.

The manifest holds the resolved recipe, the input hashes, the package versions and the SHA-256 of
every output file. A replay refuses other package versions before any work, rebuilds with the
recipe, then compares: input hashes, and every file but the reports (which hold timings). A build
the manifest marks non-deterministic (CUDA) is compared by its verify quality metrics instead.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from compressor.errors import ReplayMismatchError, UsageError

REPORT_FILES = frozenset({"report.json", "report.md", "report.html"})  # measured timings: never the same bytes twice
REPORT_DIRS = ("plots/",)  # the report's plots (timings again)
QUALITY_METRICS = ("perplexity", "perplexity_original", "kl", "top1_agreement", "greedy_prefix_match", "size_ratio")
METRIC_RTOL = 1e-3  # a non-deterministic build's metrics may move by summation order, not more


def determinism(device: str) -> dict[str, Any]:
    """Whether a build on ``device`` writes the same bytes every time, and why (recorded in the manifest)."""
    if str(device).startswith("cuda"):
        return {"files": False, "why": "CUDA kernels may sum in another order on each run; a replay compares "
                                       "the verify metrics within a relative 1e-3 instead of the bytes"}
    return {"files": True, "why": "CPU kernels with a fixed seed and thread count give the same bytes"}


def quality_metrics(verify: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Each export's quality metrics (no timings), as a replay compares them."""
    return {name: {k: v["metrics"][k] for k in QUALITY_METRICS if v.get("metrics", {}).get(k) is not None}
            for name, v in verify.items()}


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest to replay, checked for what a replay needs."""
    try:
        manifest = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the manifest {path}: {exc}",
                         hint="pass the manifest.json a `compress build` wrote") from exc
    missing = [k for k in ("recipe", "versions", "files", "input") if k not in manifest]
    if missing:
        raise UsageError(f"{path} has no {', '.join(missing)}: it is not a build manifest",
                         hint="pass the manifest.json a `compress build` wrote")
    return manifest


def recorded_processes(manifest: dict[str, Any]) -> int:
    """How many data-parallel processes calibrated the recorded build (1 when it says nothing)."""
    return int(((manifest["input"].get("data") or {}).get("calibration") or {}).get("processes") or 1)


def check_versions(manifest: dict[str, Any], current: dict[str, str | None], plugins: dict[str, str]) -> None:
    """Refuse, before any work, package or used-plugin versions other than the manifest's."""
    wanted = manifest["versions"]
    differ = [f"{name}: {wanted.get(name) or 'absent'} in the manifest, {current.get(name) or 'absent'} here"
              for name in sorted(set(wanted) | set(current)) if wanted.get(name) != current.get(name)]
    for p in manifest.get("plugins", []):
        if p.get("used") and plugins.get(p["dist"]) != p.get("version"):
            differ.append(f"plugin {p['dist']}: {p.get('version')} in the manifest, "
                          f"{plugins.get(p['dist']) or 'absent'} here")
    if differ:
        raise ReplayMismatchError("the installed versions differ from the manifest's, so a replay could not give "
                                  "the same files: " + "; ".join(differ),
                                  hint="install the versions the manifest lists (pip install NAME==VERSION), "
                                       "then replay again")


def compare(old: dict[str, Any], new: dict[str, Any], old_report: dict[str, Any] | None,
            new_report: dict[str, Any]) -> dict[str, Any]:
    """What a replay found: identical and differing files, input hash changes and metric changes."""
    def files(m: dict[str, Any]) -> dict[str, str]:
        return {k: v["sha256"] for k, v in m["files"].items()
                if k not in REPORT_FILES and not k.startswith(REPORT_DIRS)}

    before, after = files(old), files(new)
    by_bytes = old.get("determinism", {}).get("files", True)
    result: dict[str, Any] = {
        "compared": "files" if by_bytes else "metrics",
        "identical": sorted(k for k in before if after.get(k) == before[k]),
        "differ": sorted(k for k in before if k in after and after[k] != before[k]),
        "missing": sorted(set(before) - set(after)), "extra": sorted(set(after) - set(before)),
        "inputs": _input_changes(old["input"], new["input"]), "metrics": []}
    if not by_bytes:
        if old_report is None:
            raise UsageError("this manifest marks its build non-deterministic, so a replay compares verify metrics, "
                             "but there is no report.json next to it", hint="keep report.json beside manifest.json")
        result["metrics"] = _metric_changes(quality_metrics(old_report.get("verify") or {}),
                                            quality_metrics(new_report.get("verify") or {}))
    return result


def _input_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    changes = []
    if old.get("model", {}).get("sha256") != new.get("model", {}).get("sha256"):
        changes.append("the input model's SHA-256")
    for split, info in (old.get("data") or {}).items():
        if info.get("sha256") != (new.get("data") or {}).get(split, {}).get("sha256"):
            changes.append(f"the {split} data's SHA-256")
    return changes


def _metric_changes(old: dict[str, dict[str, float]], new: dict[str, dict[str, float]]) -> list[str]:
    out = []
    for export, metrics in old.items():
        for key, value in metrics.items():
            got = new.get(export, {}).get(key)
            if got is None or not math.isclose(got, value, rel_tol=METRIC_RTOL, abs_tol=1e-9):
                out.append(f"{export}.{key}: {value} recorded, {got} now")
    return out


def raise_on_mismatch(result: dict[str, Any]) -> None:
    """Raise :class:`ReplayMismatchError` naming what differs, if anything does."""
    parts = []
    for key, label in (("differ", "files differ"), ("missing", "files not rebuilt"), ("extra", "new files")):
        if result[key]:
            parts.append(f"{label}: {', '.join(result[key])}")
    if result["inputs"]:
        parts.append("inputs changed: " + ", ".join(result["inputs"]))
    if result["metrics"]:
        parts.append("metrics moved: " + "; ".join(result["metrics"]))
    if parts:
        raise ReplayMismatchError("the replay does not reproduce the manifest: " + " | ".join(parts),
                                  hint="the rebuilt output is kept for comparison; an input change means the "
                                       "model or data files are not the ones recorded")
