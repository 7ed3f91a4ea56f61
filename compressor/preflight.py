"""Preflight: what a build can check before any weights are loaded, and the plan `--dry-run` prints.

Every export's runtime is installed, every exporter accepts what the recipe will produce (where
the recipe and the model's config tell), the disk has room for the exports and the reference, and
the memory estimates of the stages that publish one.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compressor.api import Kind, PlanFacts, StageContext
from compressor.errors import CompressorError, ResourceError, UsageError
from compressor.model import ModelHandle
from compressor.plan import Plan
from compressor.recipe import Recipe
from compressor.verify import reference_options

GIB = 2**30
HEADROOM = 1.10  # estimates are rough: ask for 10% more disk than they add up to


@dataclass
class Preflight:
    """The outcome of every check, and the problems found (the first one stops a build)."""

    model: dict[str, Any]
    facts: PlanFacts
    runtimes: list[dict[str, Any]] = field(default_factory=list)
    disk: dict[str, Any] = field(default_factory=dict)
    memory: list[dict[str, Any]] = field(default_factory=list)
    offload: dict[str, Any] = field(default_factory=dict)
    problems: list[CompressorError] = field(default_factory=list)

    def raise_first(self) -> None:
        """Raise the first problem found, if any."""
        if self.problems:
            raise self.problems[0]

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable view."""
        return {"model": self.model, "kinds": sorted(k.value for k in self.facts.kinds),
                "runtimes": self.runtimes, "disk": self.disk, "memory": self.memory,
                "offload": self.offload,
                "problems": [{"error": type(p).__name__, "exit_code": int(p.exit_code), "message": str(p),
                              "hint": p.hint} for p in self.problems]}


def existing_ancestor(path: Path) -> Path:
    """The nearest directory at or above ``path`` that exists (where free space can be measured)."""
    path = Path(path).resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def verify_length(recipe: Recipe) -> int | None:
    """The longest sequence verify runs: an evaluation window, the timed prompt and decode, or a generation."""
    if not recipe.verify.enabled:
        return None
    spec = recipe.verify
    # prompts are short sentences: 64 tokens bound them before the tokenizer is loaded
    return max(recipe.data.evaluation.seq_len or 512, spec.latency.prompt_tokens + spec.latency.new_tokens,
               64 + spec.generate_tokens)


def run_preflight(plan: Plan, skeleton: ModelHandle, out: Path) -> Preflight:
    """Run every check on the plan and the model's structure; collect problems instead of raising."""
    recipe = plan.recipe
    kinds = frozenset(k for st in plan.stages for k in st.method.kinds(st.options))
    params = skeleton.num_parameters()
    facts = PlanFacts(kinds=kinds, config=skeleton.config, num_parameters=params, quantized=recipe.quantize is not None,
                      verify_len=verify_length(recipe))
    pf = Preflight(model={"ref": recipe.model, "kind": skeleton.source.kind, "parameters": params,
                          "layers": skeleton.num_layers, "model_type": getattr(skeleton.config, "model_type", "?")},
                   facts=facts)
    _check_devices(recipe, pf)
    _check_exports(plan, facts, pf)
    _check_disk(plan, params, out, pf)
    _estimate_memory(plan, skeleton, pf)
    _check_offload(plan, skeleton, pf)
    return pf


def _check_offload(plan: Plan, skeleton: ModelHandle, pf: Preflight) -> None:
    """Choose the offload mode; with ``disk``, what needs the whole model must fit in RAM (else exit 6)."""
    from compressor.offload_mode import DTYPE_BYTES, choose_offload, whole_model_error

    try:
        choice = choose_offload(plan.recipe.offload, skeleton, plan.recipe.dtype)
    except CompressorError as exc:
        pf.problems.append(exc)
        return
    pf.offload = choice.to_dict()
    if choice.mode != "disk":
        return
    loaded = skeleton.num_parameters() * DTYPE_BYTES[plan.recipe.dtype]  # what loading it whole gives
    estimates = {m["stage"]: int(m.get("bytes") or 0) for m in pf.memory}  # a method's own work, where given
    whole = [(f"{st.slot} {st.spec.method}", "it does not work layer by layer")
             for st in plan.stages if not st.method.supports_offload(st.options)]
    whole += [(f"export {ex.spec.dirname} ({ex.spec.format})", "it does not stream tensors to disk")
              for ex in plan.exports if not ex.exporter.streams_offloaded_models(ex.options)]
    pf.offload["whole_model"] = [w[0] for w in whole]
    for what, why in whole:
        error = whole_model_error(what, why, loaded, estimates.get(what, 0))
        if error is not None:
            pf.problems.append(error)
            return


def _check_devices(recipe: Recipe, pf: Preflight) -> None:
    """A CUDA device must exist before anything is pruned or exported (the recipe has checked the spelling)."""
    import torch

    for flag, device in (("--device", recipe.device), ("--verify-device", recipe.verify.device)):
        if not device.startswith("cuda"):
            continue
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= count:
            have = f"{count} CUDA device(s)" if count else "no CUDA device (or a torch build without CUDA)"
            pf.problems.append(UsageError(f"{flag} {device} was asked for, but this machine has {have}",
                                          hint="use cpu, or a cuda:N that exists"))


def _check_exports(plan: Plan, facts: PlanFacts, pf: Preflight) -> None:
    verify = plan.recipe.verify.enabled
    for ex in plan.exports:
        row: dict[str, Any] = {"export": ex.spec.dirname, "format": ex.spec.format, "runtime": ex.exporter.runtime_name}
        try:
            ex.exporter.check_environment(ex.options, verify)
            row["versions"] = {k: v for k, v in ex.exporter.runtime_versions().items() if v}
            row["status"] = "ok"
        except CompressorError as exc:
            row["status"], row["message"] = "missing", str(exc)
            pf.problems.append(exc)
        try:
            ex.exporter.check_plan(ex.options, facts)
            if ex.exporter.runtime_name and Kind.NONUNIFORM in facts.kinds:
                row["note"] = "per-layer sizes"
        except CompressorError as exc:
            row["refused"] = str(exc)
            pf.problems.append(exc)
        pf.runtimes.append(row)


def _check_disk(plan: Plan, params: int, out: Path, pf: Preflight) -> None:
    exports = {ex.spec.dirname: ex.exporter.estimate_size(ex.options, params) for ex in plan.exports}
    reference = 0
    if plan.recipe.verify.enabled:  # every reference export is written before the original model is freed
        reference = sum(ex.exporter.estimate_size(reference_options(ex.exporter, ex.options, plan.recipe.verify),
                                                  params) for ex in plan.exports)
    need = int(HEADROOM * (sum(exports.values()) + reference))
    where = existing_ancestor(Path(out).parent)
    free = shutil.disk_usage(where).free
    pf.disk = {"path": str(where), "need_bytes": need, "free_bytes": free, "exports_bytes": exports,
               "reference_bytes": reference}
    if need > free:
        pf.problems.append(ResourceError(
            f"the build needs about {need / GIB:.2f} GiB on {where} (exports {sum(exports.values()) / GIB:.2f} GiB, "
            f"verify reference {reference / GIB:.2f} GiB) but only {free / GIB:.2f} GiB is free",
            hint="free some space, choose an --out on a larger disk, or drop an export"))


def _estimate_memory(plan: Plan, skeleton: ModelHandle, pf: Preflight) -> None:
    calib = plan.recipe.data.calibration
    ctx = StageContext(seed=plan.recipe.seed, device=plan.recipe.device, dtype=plan.recipe.dtype, log=lambda _: None)
    for st in plan.stages:
        row: dict[str, Any] = {"stage": f"{st.slot} {st.spec.method}"}
        try:
            est = st.method.estimate_memory(skeleton, st.options, calib.samples or 32, calib.seq_len or 512, ctx)
        except Exception as exc:  # an estimate is advice: a plugin that cannot give one does not stop the plan
            est, row["note"] = None, f"no estimate: {type(exc).__name__}: {exc}"
        if est is not None:
            row.update({"bytes": int(est.total), "device": est.device, "available_bytes": est.available,
                        "description": est.describe()})
        pf.memory.append(row)


def describe(recipe: Recipe, pf: Preflight) -> list[str]:
    """The human-readable lines of the preflight part of `--dry-run`."""
    lines = [f"model: {pf.model['ref']} ({pf.model['kind']}, {pf.model['model_type']}, "
             f"{pf.model['parameters']:,} parameters, {pf.model['layers']} layers)"]
    for r in pf.runtimes:
        state = r["status"] if r["status"] == "ok" else f"MISSING: {r['message']}"
        versions = ", ".join(f"{k} {v}" for k, v in r.get("versions", {}).items())
        lines.append(f"export {r['export']} ({r['format']}): runtime {r['runtime']}: {state}"
                     + (f" [{versions}]" if versions else "") + (f"; REFUSED: {r['refused']}" if "refused" in r else ""))
    d = pf.disk
    lines.append(f"disk: about {d['need_bytes'] / GIB:.2f} GiB needed on {d['path']}, "
                 f"{d['free_bytes'] / GIB:.2f} GiB free")
    for m in pf.memory:
        lines.append(f"memory, {m['stage']}: " + (m.get("description") or m.get("note") or "the method gives no estimate"))
    if pf.offload:
        o = pf.offload
        why = o["reason"] if o["requested"] == o["mode"] else f"{o['requested']}: {o['reason']}"
        lines.append(f"offload: {o['mode']} ({why})"
                     + (f"; whole model loaded for {', '.join(o['whole_model'])}" if o.get("whole_model") else ""))
    return lines
