"""The build pipeline: load -> prune stages -> quantize? -> exports -> verify -> report."""

from __future__ import annotations

import gc
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import ValidationError

from compressor.atomic import staged_dir
from compressor.api import Benefit, Exporter, Kind, Method, RuntimeSettings, StageContext
from compressor.data import check_vocab, load_windows, windows_sha256
from compressor.errors import NoBenefitError, PluginError, RecipeError
from compressor.manifest import build_manifest
from compressor.model import ModelHandle
from compressor.model_loading import load_model
from compressor.plugin_manager import Registry
from compressor.recipe import DataSpec, ExportSpec, Recipe, StageSpec, dump_recipe
from compressor.report import write_reports
from compressor.resources import Usage, measure
from compressor.verify import verify_against_original, write_artifact_info

Log = Callable[[str], None]


@dataclass
class PlannedStage:
    """A recipe stage resolved to a method instance and validated options."""

    index: int
    slot: str  # "prune" or "quantize"
    spec: StageSpec
    method: Method
    options: Any


@dataclass
class PlannedExport:
    """A recipe export resolved to an exporter instance and validated options."""

    spec: ExportSpec
    exporter: Exporter
    options: Any


@dataclass
class Plan:
    """Everything a build will do, checked before any expensive step."""

    recipe: Recipe
    stages: list[PlannedStage]
    exports: list[PlannedExport]


@dataclass
class BuildResult:
    """Where the build wrote its output and what verify concluded."""

    out_dir: Path
    report: dict[str, Any]
    passed: bool | None
    failed_budgets: list[str] = field(default_factory=list)


def _validate_options(cls: type[Any], raw: dict[str, Any], where: str) -> Any:
    try:
        return cls.Options.model_validate(raw)
    except ValidationError as exc:
        valid = ", ".join(sorted(cls.Options.model_fields)) or "(none)"
        lines = []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "(options)"
            msg = "unknown option" if err["type"] == "extra_forbidden" else err["msg"]
            lines.append(f"{loc}: {msg}")
        raise RecipeError(f"{where}: invalid options:\n  " + "\n  ".join(lines),
                          hint=f"valid options for {cls.name}: {valid}") from None


def plan_build(recipe: Recipe, registry: Registry) -> Plan:
    """Resolve every method and exporter and validate their options, or raise naming what is wrong."""
    stages: list[PlannedStage] = []
    slots = [("prune", s) for s in recipe.prune] + ([("quantize", recipe.quantize)] if recipe.quantize else [])
    for i, (slot, spec) in enumerate(slots):
        cls = registry.method(spec.method)
        if cls.stage != slot:
            raise RecipeError(f"{cls.name!r} is a {cls.stage} method but the recipe uses it as a {slot} stage",
                              hint=f"move it to the recipe's `{cls.stage}` section")
        where = f"{slot}[{i}] ({spec.method})" if slot == "prune" else f"quantize ({spec.method})"
        options = _validate_options(cls, spec.options, where)
        stages.append(PlannedStage(i, slot, spec, _instantiate(cls), options))
    exports = []
    for spec in recipe.export:
        cls = registry.exporter(spec.format)
        options = _validate_options(cls, spec.options, f"export {spec.dirname} ({spec.format})")
        exports.append(PlannedExport(spec, _instantiate(cls), options))
    if not exports:
        raise RecipeError("the recipe has no export", hint="add at least one entry under `export`")
    return Plan(recipe, stages, exports)


def _instantiate(cls: type[Any]) -> Any:
    try:
        return cls()
    except Exception as exc:
        raise PluginError(f"plugin class {cls.__name__} ({cls.name}) could not be created: {exc}") from exc


def feasibility(plan: Plan) -> list[dict[str, Any]]:
    """Say, per export target, what speed and size each requested compression kind can bring."""
    kinds: dict[Kind, list[str]] = {}
    for st in plan.stages:
        for kind in st.method.kinds(st.options):
            kinds.setdefault(kind, []).append(st.spec.method)
    rows = []
    for ex in plan.exports:
        table = ex.exporter.benefits(ex.options)
        for kind, methods in kinds.items():
            benefit = table.get(kind, Benefit(False, False, "this exporter declares no benefit for it"))
            rows.append({"export": ex.spec.dirname, "runtime": ex.exporter.runtime_name, "kind": kind.value,
                         "methods": methods, "speed": benefit.speed, "size": benefit.size, "note": benefit.note})
    return rows


def check_feasibility(rows: list[dict[str, Any]], strict: bool, log: Log) -> list[str]:
    """Print what each target can gain; with ``strict`` a kind with no benefit at all is an error."""
    warnings = []
    for r in rows:
        if not r["speed"]:
            gain = "a smaller file but no speed-up" if r["size"] else "no speed-up and no size reduction"
            msg = (f"{', '.join(r['methods'])} ({r['kind']}) gives {gain} in {r['runtime']} "
                   f"(export {r['export']}){': ' + r['note'] if r['note'] else ''}")
            warnings.append(msg)
            log(f"warning: {msg}")
        else:
            log(f"{r['runtime']} ({r['export']}): {r['kind']} can make it faster"
                f"{' and smaller' if r['size'] else ''}; verify will measure it")
    if strict:
        useless = [r for r in rows if not r["speed"] and not r["size"]]
        if useless:
            r = useless[0]
            raise NoBenefitError(f"--strict: {r['kind']} from {', '.join(r['methods'])} cannot make the "
                                 f"{r['runtime']} export faster or smaller",
                                 hint="remove that stage, choose structured pruning (layers, width) or quantization,"
                                      " or drop --strict")
    return warnings


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _load_data(spec: DataSpec, role: str, model: ModelHandle, seed: int) -> np.ndarray:
    windows = load_windows(spec.source, role, model.tokenizer, spec.samples, spec.seq_len, seed)  # type: ignore[arg-type]
    check_vocab(windows, int(model.config.vocab_size), role)
    return windows


def build(recipe: Recipe, registry: Registry, out: Path, force: bool = False, log: Log = print) -> BuildResult:
    """Run the whole pipeline into ``out``, which ends up complete or absent."""
    plan = plan_build(recipe, registry)
    rows = feasibility(plan)
    warnings = check_feasibility(rows, recipe.strict, log)
    usage: dict[str, Usage] = {}
    with staged_dir(out, force) as stage_dir:
        _seed_everything(recipe.seed)
        log(f"loading model {recipe.model}")
        with measure() as usage["load"]:
            model = _load(recipe)
        source_info = dict(model.source.__dict__)
        data_info: dict[str, Any] = {}
        calib_spec = recipe.data.calibration

        def calibration() -> np.ndarray:
            windows = _load_data(calib_spec, "calibration", model, recipe.seed)
            data_info["calibration"] = {"source": calib_spec.source, "shape": list(windows.shape),
                                        "sha256": windows_sha256(windows)}
            return windows

        ctx = StageContext(seed=recipe.seed, device=recipe.device, dtype=recipe.dtype, workdir=stage_dir / ".work",
                           log=log, calibration_loader=calibration)
        original_params = model.num_parameters()
        stage_reports = []
        for st in plan.stages:
            label = f"{st.slot} {st.spec.method}"
            log(f"stage {label}")
            with measure() as u:
                details = _run_method(st, model, ctx)
            stage_reports.append({"slot": st.slot, "method": st.spec.method, "options": st.options.model_dump(mode="json"),
                                  "details": details, "usage": u.to_dict(),
                                  "parameters_after": model.num_parameters(), "layers_after": model.num_layers})
            usage[label] = u
        shutil.rmtree(stage_dir / ".work", ignore_errors=True)
        model_summary = {"parameters_original": original_params, "parameters": model.num_parameters(),
                         "layers": model.num_layers, "uniform": model.is_uniform(),
                         "layer_specs": [s.to_dict() for s in model.layer_specs()]}
        export_reports = {}
        for ex in plan.exports:
            dest = stage_dir / ex.spec.dirname
            log(f"export {ex.spec.dirname} ({ex.spec.format})")
            with measure() as u:
                details = _export(ex, model, dest)
            usage[f"export {ex.spec.dirname}"] = u
            export_reports[ex.spec.dirname] = {"format": ex.spec.format, "details": details, "usage": u.to_dict()}
        eval_windows = None
        verify_reports: dict[str, Any] = {}
        if recipe.verify.enabled:
            eval_windows = _load_data(recipe.data.evaluation, "evaluation", model, recipe.seed)
            data_info["evaluation"] = {"source": recipe.data.evaluation.source, "shape": list(eval_windows.shape),
                                       "sha256": windows_sha256(eval_windows)}
            prompts = [list(model.tokenizer(p)["input_ids"]) for p in recipe.verify.prompts]
            del model, ctx
            gc.collect()
            with measure() as usage["verify"]:
                verify_reports = _verify_all(plan, recipe, stage_dir, eval_windows, prompts, log)
        else:
            del model
        manifest = build_manifest(recipe_data=dump_recipe(recipe), source=source_info, data=data_info,
                                  registry=registry, plan=plan, usage=usage, stage_reports=stage_reports)
        report = _assemble_report(recipe, model_summary, stage_reports, export_reports, verify_reports, rows, warnings)
        write_reports(stage_dir, manifest, report)
        # the resolved recipe, so that `compress verify --recipe OUT/recipe.yaml` repeats the same gate elsewhere
        (stage_dir / "recipe.yaml").write_text(yaml.safe_dump(dump_recipe(recipe), sort_keys=False))
    passed = report["verdict"] == "pass" if recipe.verify.enabled else None
    failed = [f"{name}: {b['detail']}" for name, v in verify_reports.items() for b in v["budgets"] if not b["passed"]]
    return BuildResult(Path(out).resolve(), report, passed, failed)


def _load(recipe: Recipe, hash_files: bool = True) -> ModelHandle:
    return load_model(recipe.model, allow_pickle=recipe.allow_pickle, trust_remote_code=recipe.trust_remote_code,
                      dtype=recipe.dtype, device=recipe.device, hash_files=hash_files)


def _run_method(st: PlannedStage, model: ModelHandle, ctx: StageContext) -> dict[str, Any]:
    try:
        return st.method.apply(model, st.options, ctx) or {}
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:
        from compressor.errors import CompressorError

        if isinstance(exc, CompressorError):
            raise
        raise PluginError(f"method {st.spec.method!r} failed: {type(exc).__name__}: {exc}",
                          hint="set COMPRESSOR_DEBUG=1 for the traceback and report it to the plugin's authors") from exc


def _export(ex: PlannedExport, model: ModelHandle, dest: Path) -> dict[str, Any]:
    from compressor import __version__
    from compressor.errors import CompressorError

    dest.mkdir(parents=True)
    try:
        ex.exporter.check_model(model, ex.options)
        details = ex.exporter.export(model, dest, ex.options) or {}
    except (KeyboardInterrupt, MemoryError, CompressorError):
        raise
    except OSError:
        raise
    except Exception as exc:
        raise PluginError(f"exporter {ex.spec.format!r} failed: {type(exc).__name__}: {exc}",
                          hint="set COMPRESSOR_DEBUG=1 for the traceback") from exc
    write_artifact_info(dest, {"format": ex.spec.format, "options": ex.options.model_dump(mode="json"),
                               "compressor_version": __version__, "layers": model.num_layers,
                               "parameters": model.num_parameters(), "details": details})
    return details


def _verify_all(plan: Plan, recipe: Recipe, stage_dir: Path, windows: np.ndarray, prompts: list[list[int]],
                log: Log) -> dict[str, Any]:
    spec = recipe.verify
    max_len = max(windows.shape[1], spec.latency.prompt_tokens + spec.latency.new_tokens,
                  max(len(p) for p in prompts) + spec.generate_tokens) + 16
    settings = RuntimeSettings(device=spec.device, dtype=recipe.dtype, max_len=max_len)
    log("loading the original model again for the reference exports")
    original = _load(recipe, hash_files=False)
    ref_root = stage_dir / ".reference"
    results = {}
    try:
        for ex in plan.exports:
            ref_dir = ref_root / ex.spec.dirname
            log(f"verify {ex.spec.dirname}: exporting the original model for {ex.exporter.runtime_name}")
            _export(ex, original, ref_dir)
            results[ex.spec.dirname] = verify_against_original(
                ex.exporter, ex.options, stage_dir / ex.spec.dirname, ref_dir, windows, prompts, spec, settings, log)
            shutil.rmtree(ref_dir, ignore_errors=True)
    finally:
        shutil.rmtree(ref_root, ignore_errors=True)
        del original
        gc.collect()
    return results


def _assemble_report(recipe: Recipe, model_summary: dict[str, Any], stages: list[dict[str, Any]],
                     exports: dict[str, Any], verify: dict[str, Any], rows: list[dict[str, Any]],
                     warnings: list[str]) -> dict[str, Any]:
    if not recipe.verify.enabled:
        verdict = "not verified"
    else:
        verdict = "pass" if all(v["passed"] for v in verify.values()) else "fail"
    return {"verdict": verdict, "model": recipe.model, "summary": model_summary, "stages": stages,
            "exports": exports, "verify": verify, "feasibility": rows, "warnings": warnings}


def verify_artifact(artifact: Path, recipe: Recipe, registry: Registry, fmt: str | None = None,
                    log: Log = print) -> dict[str, Any]:
    """Verify an existing export directory against ``recipe.model``, measured in the export's runtime."""
    import tempfile

    from compressor.verify import read_artifact_info

    artifact = Path(artifact)
    if not artifact.is_dir():
        from compressor.errors import InputError

        raise InputError(f"artifact {artifact} is not a directory", hint="pass one export subdirectory of a build")
    info = read_artifact_info(artifact) if fmt is None else {"format": fmt, "options": {}}
    cls = registry.exporter(info["format"])
    ex = PlannedExport(ExportSpec(format=info["format"], name=artifact.name),
                       _instantiate(cls), _validate_options(cls, info.get("options", {}), f"artifact {artifact}"))
    _seed_everything(recipe.seed)
    log(f"loading the original model {recipe.model}")
    original = _load(recipe)
    windows = _load_data(recipe.data.evaluation, "evaluation", original, recipe.seed)
    prompts = [list(original.tokenizer(p)["input_ids"]) for p in recipe.verify.prompts]
    spec = recipe.verify
    max_len = max(windows.shape[1], spec.latency.prompt_tokens + spec.latency.new_tokens,
                  max(len(p) for p in prompts) + spec.generate_tokens) + 16
    settings = RuntimeSettings(device=spec.device, dtype=recipe.dtype, max_len=max_len)
    with tempfile.TemporaryDirectory(prefix="compressor-verify-") as tmp:
        ref_dir = Path(tmp) / "reference"
        log(f"exporting the original model as {info['format']}")
        _export(ex, original, ref_dir)
        del original
        gc.collect()
        result = verify_against_original(ex.exporter, ex.options, artifact, ref_dir, windows, prompts, spec,
                                          settings, log)
    return {"verdict": "pass" if result["passed"] else "fail", "model": recipe.model, "artifact": str(artifact),
            "format": info["format"], "verify": {artifact.name: result},
            "evaluation": {"source": recipe.data.evaluation.source, "shape": list(windows.shape),
                           "sha256": windows_sha256(windows)}}
