"""``compress build``: run a recipe (a file, flags, or both) into an output directory."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import typer

from compressor.cli.common import (err_console, handle_errors, make_console, output_mode, print_json, progress_lines,
                                   quiet, say)
from compressor.errors import ExitCode, RecipeError, UsageError
from compressor.plugin_manager import Registry, load_registry
from compressor.recipe import load_recipe_dict, parse_assignment, recipe_from_dict, set_path
from compressor.report import verdict_table

BUDGET_FLAGS = ("max_ppl_increase_pct", "min_top1_agreement", "max_kl", "min_greedy_match", "min_speedup",
                "min_prefill_speedup", "max_size_ratio")


def _apply_plugin_options(stages: list[dict[str, Any]], assignments: dict[str, Any], registry: Registry,
                          kind: str) -> None:
    """Give each CLI option to the stages/exports whose plugin declares it; an option nobody takes is an error."""
    for key, value in assignments.items():
        takers = []
        for st in stages:
            cls = (registry.method(st["method"]) if kind == "method" else registry.exporter(st["format"])
                   if kind == "exporter" else registry.evaluator(st["name"]))
            if key in cls.Options.model_fields:
                st.setdefault("options", {})[key] = value
                takers.append(cls.name)
        if not takers:
            names = ", ".join(st.get("method") or st.get("format") or st.get("name") for st in stages) or "(none given)"
            raise RecipeError(f"no {kind} in this build takes the option {key!r} ({kind}s: {names})",
                              hint="run `compress plugins --options` to list each plugin's options")


def apply_evaluators(raw: dict[str, Any], evaluators: list[str], options: list[str], registry: Registry) -> None:
    """--evaluator NAME (repeatable) and -V KEY=VALUE: set verify.evaluators, giving each option to who takes it."""
    if evaluators:
        raw.setdefault("verify", {})["evaluators"] = [{"name": e, "options": {}} for e in evaluators]
    if options:
        given = (raw.get("verify") or {}).get("evaluators") or []
        if not given:
            raise RecipeError("-V/--evaluator-option was given but verify runs no evaluator",
                              hint="add --evaluator NAME (e.g. lm_eval), or drop the -V options")
        _apply_plugin_options(given, dict(parse_assignment(o) for o in options), registry, "evaluator")


def assemble_recipe(recipe_file: Path | None, overrides: dict[str, Any], methods: list[str],
                    method_options: dict[str, Any], exports: list[str], export_options: dict[str, Any],
                    sets: list[str], registry: Registry) -> dict[str, Any]:
    """Merge a recipe file, explicit flags and --set assignments into one raw recipe mapping."""
    raw: dict[str, Any] = load_recipe_dict(recipe_file) if recipe_file else {}
    for dotted, value in overrides.items():
        if value is not None:
            set_path(raw, dotted, value)
    if methods:
        raw["prune"] = [{"method": m, "options": {}} for m in methods]
    if method_options:
        _apply_plugin_options(raw.get("prune") or [], method_options, registry, "method")
    if exports:
        raw["export"] = [{"format": e, "options": {}} for e in exports]
    if export_options:
        raw.setdefault("export", [{"format": "vllm", "options": {}}])
        _apply_plugin_options(raw["export"], export_options, registry, "exporter")
    for assignment in sets:
        key, value = parse_assignment(assignment)
        set_path(raw, key, value)
    return raw


@handle_errors
def build_command(
    out: Path = typer.Option(..., "--out", "-o", help="Output directory (must be empty unless --force)."),
    recipe: Path | None = typer.Option(None, "--recipe", "-r", help="YAML recipe; flags override its fields."),
    model: str | None = typer.Option(None, "--model", "-m", help="HF directory, .gguf file, hub id or 'smollm2-135m'."),
    method: list[str] = typer.Option([], "--method", help="Prune method (repeat for several stages, in order)."),
    layers: int | None = typer.Option(None, "--layers", help="Shortcut for the method option `layers`."),
    sparsity: float | None = typer.Option(None, "--sparsity", help="Shortcut for the method option `sparsity`."),
    pattern: str | None = typer.Option(None, "--pattern", help="Shortcut for the method option `pattern` (e.g. 2:4)."),
    option: list[str] = typer.Option([], "--option", "-O", help="Method option KEY=VALUE (repeatable)."),
    heal: str | None = typer.Option(None, "--heal", help="Heal method (e.g. distill), run after the prune stages."),
    heal_option: list[str] = typer.Option([], "--heal-option", "-H", help="Heal option KEY=VALUE (repeatable)."),
    heal_data: str | None = typer.Option(None, "--heal-data", help="Heal training data: 'shakespeare', "
                                                                    ".txt/.jsonl/.npy or a folder."),
    heal_samples: int | None = typer.Option(None, "--heal-samples"),
    heal_seq_len: int | None = typer.Option(None, "--heal-seq-len"),
    quantize: str | None = typer.Option(None, "--quantize", help="Quantize method (runs after the prune stages)."),
    quantize_option: list[str] = typer.Option([], "--quantize-option", "-Q", help="Quantize option KEY=VALUE."),
    export: list[str] = typer.Option([], "--export", "-e", help="Export format (repeatable): vllm, onnx, gguf, ..."),
    export_option: list[str] = typer.Option([], "--export-option", "-E", help="Exporter option KEY=VALUE."),
    evaluator: list[str] = typer.Option([], "--evaluator", help="Task evaluator verify runs on both models in each "
                                                                 "export's runtime (repeatable), e.g. lm_eval."),
    evaluator_option: list[str] = typer.Option([], "--evaluator-option", "-V", help="Evaluator option KEY=VALUE, "
                                                                                      "e.g. tasks=shakespeare_mc."),
    calib: str | None = typer.Option(None, "--calib", help="Calibration data: 'shakespeare', .txt/.jsonl/.npy, folder."),
    calib_samples: int | None = typer.Option(None, "--calib-samples"),
    calib_seq_len: int | None = typer.Option(None, "--calib-seq-len"),
    eval_data: str | None = typer.Option(None, "--eval", help="Evaluation data (held out from calibration)."),
    eval_samples: int | None = typer.Option(None, "--eval-samples"),
    eval_seq_len: int | None = typer.Option(None, "--eval-seq-len"),
    seed: int | None = typer.Option(None, "--seed"),
    device: str | None = typer.Option(None, "--device", help="cpu or cuda (compression stages)."),
    dtype: str | None = typer.Option(None, "--dtype", help="float32, bfloat16 or float16."),
    verify_device: str | None = typer.Option(None, "--verify-device", help="Device for the verify runtimes."),
    offload: str | None = typer.Option(None, "--offload", help="auto, none, cpu or disk: keep the weights "
                                                                "memory-mapped on disk and work layer by layer."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow pickle (.bin/.pt) weights: runs code!"),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Run model code from the model dir."),
    no_verify: bool = typer.Option(False, "--no-verify", help="Skip the verify gate."),
    max_ppl_increase_pct: float | None = typer.Option(None, "--max-ppl-increase", help="Budget, percent."),
    min_top1_agreement: float | None = typer.Option(None, "--min-top1", help="Budget, 0..1."),
    max_kl: float | None = typer.Option(None, "--max-kl", help="Budget, nats."),
    min_greedy_match: float | None = typer.Option(None, "--min-greedy-match", help="Budget, 0..1."),
    min_speedup: float | None = typer.Option(None, "--min-speedup", help="Budget: decode tokens/s ratio."),
    min_prefill_speedup: float | None = typer.Option(None, "--min-prefill-speedup", help="Budget: prefill ratio."),
    max_size_ratio: float | None = typer.Option(None, "--max-size-ratio", help="Budget: size on disk ratio."),
    strict: bool = typer.Option(False, "--strict", help="Fail when a compression cannot speed up a target."),
    sets: list[str] = typer.Option([], "--set", help="Set any recipe field: dotted.key=value (repeatable)."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty output directory."),
    as_json: bool = typer.Option(False, "--json", help="Print report.json on stdout."),
    junit: Path | None = typer.Option(None, "--junit", help="Write the verdict as JUnit XML (a suite per export, "
                                                             "a case per budget)."),
    summary_md: Path | None = typer.Option(None, "--summary-md", help="Append a Markdown verdict table to this file "
                                                                       "(default: $GITHUB_STEP_SUMMARY when set)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and the preflight checks, then stop."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the verdict (and errors)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also print each step's timing and memory, and debug logs."),
    log_json: Path | None = typer.Option(None, "--log-json", help="Append structured events (steps, timings, peak "
                                                                   "memory, warnings, verdict) to this file as JSON lines."),
    replay: Path | None = typer.Option(None, "--replay", help="Rebuild what this manifest.json records and compare "
                                                              "the files (exit 8 when they differ)."),
    nproc: int | None = typer.Option(None, "--nproc", help="Calibrate data-parallel in N processes on this machine "
                                                           "(torch.distributed; as torchrun --nproc-per-node N)."),
) -> None:
    """Load, prune, quantize, export and verify a model; exit 5 when a budget fails, 7 when verify cannot measure."""
    from compressor import distributed

    if nproc is not None and nproc < 1:
        raise UsageError(f"--nproc must be at least 1, got {nproc}", hint="use 2 or more for a data-parallel build")
    if nproc is not None and nproc > 1 and not dry_run and replay is None and not distributed.launched():
        from compressor.launch import launch, strip_nproc

        raise typer.Exit(launch(nproc, strip_nproc(sys.argv[1:])))
    worker = distributed.launched() and os.environ.get("RANK", "0") != "0"
    if worker:  # a rank other than 0 says nothing but its errors, and writes nothing
        quiet, verbose, log_json, as_json, junit, summary_md = True, False, None, False, None, None
    with output_mode(quiet, verbose, log_json):
        registry = load_registry()
        if replay is not None:
            shaping = {"--recipe": recipe, "--model": model, "--method": method, "--layers": layers,
                       "--sparsity": sparsity, "--pattern": pattern, "-O": option, "--heal": heal, "-H": heal_option,
                       "--heal-data": heal_data, "--heal-samples": heal_samples, "--heal-seq-len": heal_seq_len,
                       "--quantize": quantize,
                       "-Q": quantize_option, "--export": export, "-E": export_option, "--evaluator": evaluator,
                       "-V": evaluator_option, "--calib": calib,
                       "--calib-samples": calib_samples, "--calib-seq-len": calib_seq_len, "--eval": eval_data,
                       "--eval-samples": eval_samples, "--eval-seq-len": eval_seq_len, "--seed": seed, "--device": device,
                       "--dtype": dtype, "--verify-device": verify_device, "--offload": offload, "--set": sets,
                       "--no-verify": no_verify, "--strict": strict, "--allow-pickle": allow_pickle,
                       "--trust-remote-code": trust_remote_code, "--dry-run": dry_run,
                       **{f"budget {k}": v for k, v in budgets_of(locals()).items()}}
            given = [flag for flag, value in shaping.items() if value not in (None, [], False)]
            if given:
                raise UsageError(f"--replay rebuilds exactly the manifest's recipe, so {', '.join(given)} cannot be "
                                 "given with it", hint="drop those flags, or build without --replay")
            from compressor.replay import read_manifest, recorded_processes

            recorded = read_manifest(replay)
            processes = recorded_processes(recorded)
            if nproc is not None and nproc != processes:
                raise UsageError(f"--nproc {nproc} with --replay: the manifest's build ran in {processes} "
                                 f"process(es), and a replay uses the same number",
                                 hint="drop --nproc; the replay starts as many processes as the manifest records")
            if processes > 1 and not distributed.launched():  # the same split of the windows, the same sums
                from compressor.launch import launch, strip_nproc

                raise typer.Exit(launch(processes, strip_nproc(sys.argv[1:])))
            with distributed.process_group(str(recorded["recipe"].get("device", "cpu"))):
                if worker:
                    from compressor.pipeline import build_worker

                    build_worker(recipe_from_dict(recorded["recipe"]), registry, log=lambda _: None)
                    return
                _replay(replay, registry, out, force, as_json, junit, summary_md)
            return
        budgets = budgets_of(locals())
        overrides: dict[str, Any] = {
            "model": model, "seed": seed, "device": device, "dtype": dtype, "offload": offload,
            "allow_pickle": True if allow_pickle else None, "trust_remote_code": True if trust_remote_code else None,
            "strict": True if strict else None, "verify.enabled": False if no_verify else None,
            "verify.device": verify_device,
            "data.calibration.source": calib, "data.calibration.samples": calib_samples,
            "data.calibration.seq_len": calib_seq_len, "data.evaluation.source": eval_data,
            "data.evaluation.samples": eval_samples, "data.evaluation.seq_len": eval_seq_len,
            "data.heal.source": heal_data, "data.heal.samples": heal_samples, "data.heal.seq_len": heal_seq_len,
            **{f"verify.budgets.{k}": v for k, v in budgets.items()},
        }
        method_options = dict(parse_assignment(o) for o in option)
        for key, value in (("layers", layers), ("sparsity", sparsity), ("pattern", pattern)):
            if value is not None:
                method_options[key] = value
        if quantize_option and not quantize:
            raise RecipeError("-Q/--quantize-option was given without --quantize, so nothing would take it",
                              hint="add --quantize METHOD, or drop the -Q options")
        if heal_option and not heal:
            raise RecipeError("-H/--heal-option was given without --heal, so nothing would take it",
                              hint="add --heal distill, or drop the -H options")
        if heal:
            overrides["heal"] = {"method": heal, "options": dict(parse_assignment(o) for o in heal_option)}
        if quantize:
            overrides["quantize"] = {"method": quantize, "options": dict(parse_assignment(o) for o in quantize_option)}
        raw = assemble_recipe(recipe, overrides, method, method_options, export, dict(parse_assignment(o) for o in export_option),
                              [], registry)
        apply_evaluators(raw, evaluator, evaluator_option, registry)
        for assignment in sets:  # last, so that --set can change anything the flags set
            key, value = parse_assignment(assignment)
            set_path(raw, key, value)
        parsed = recipe_from_dict(raw, f" {recipe}" if recipe else "")
        from compressor.atomic import claim_output
        from compressor.pipeline import build, prepare, recipe_inputs

        inputs = recipe_inputs(parsed) + ([recipe] if recipe else [])
        check_ci_outputs(junit, summary_md, [*inputs, out])
        if dry_run:
            with progress_lines("planning") as progress:
                prepared = prepare(parsed, registry, out, log=progress)
            _print_plan(parsed, prepared, as_json)
            prepared.preflight.raise_first()
            return
        if worker:
            from compressor.pipeline import build_worker

            with distributed.process_group(parsed.device):
                build_worker(parsed, registry, log=lambda _: None)
            return
        with distributed.process_group(parsed.device), progress_lines("planning") as progress:
            # --out is held from here to the end: overlap checks, lock, debris of killed builds
            with claim_output(out, force, inputs, log=progress) as claim:
                prepared = prepare(parsed, registry, out, log=progress)
                result = build(parsed, registry, out, force=force, log=progress, prepared=prepared, claim=claim)
        write_ci_outputs(result.report, junit, summary_md)
        show_verdict(result.report, as_json, f"output: {result.out_dir}  (report.html, report.md, report.json, manifest.json)")
        exit_for_verdict(result.verdict, result.failed_budgets, result.errors)


def show_verdict(report: dict[str, Any], as_json: bool, footer: str | None = None) -> None:
    """Print the result: JSON, one verdict line under --quiet, or the verdict table and ``footer``."""
    from compressor.events import emit

    emit("verdict", verdict=report["verdict"], exports={n: v["status"] for n, v in (report.get("verify") or {}).items()})
    if as_json:
        print_json(report)
    elif quiet():
        print(f"verdict: {report['verdict'].upper()}")
    else:
        if report.get("verify"):
            make_console().print(verdict_table(report))
        if footer:
            print(footer)


def budgets_of(flags: dict[str, Any]) -> dict[str, Any]:
    """The budget flags' values by recipe field name."""
    return {k: flags[k] for k in ("max_ppl_increase_pct", "min_top1_agreement", "max_kl", "min_greedy_match",
                                  "min_speedup", "min_prefill_speedup", "max_size_ratio")}


def _replay(manifest_path: Path, registry: Any, out: Path, force: bool, as_json: bool, junit: Path | None,
            summary_md: Path | None) -> None:
    """Rebuild a manifest's recipe into ``out`` and compare; exit 8 when anything differs."""
    from compressor.atomic import claim_output
    from compressor.manifest import MANIFEST_FILE, environment_versions
    from compressor.pipeline import build, prepare, recipe_inputs
    from compressor.replay import check_versions, compare, raise_on_mismatch, read_manifest

    manifest = read_manifest(manifest_path)
    check_versions(manifest, environment_versions(), {p.dist: p.version for p in registry.plugins if p.version})
    parsed = recipe_from_dict(manifest["recipe"], f" (the recipe in {manifest_path})")
    inputs = recipe_inputs(parsed) + [manifest_path]
    check_ci_outputs(junit, summary_md, [*inputs, out])
    with progress_lines("replaying") as progress:
        with claim_output(out, force, inputs, log=progress) as claim:
            prepared = prepare(parsed, registry, out, log=progress)
            result = build(parsed, registry, out, force=force, log=progress, prepared=prepared, claim=claim)
    old_report_path = manifest_path.parent / "report.json"
    old_report = json.loads(old_report_path.read_text()) if old_report_path.is_file() else None
    found = compare(manifest, json.loads((out / MANIFEST_FILE).read_text()), old_report, result.report)
    write_ci_outputs(result.report, junit, summary_md)
    show_verdict({**result.report, "replay": found}, as_json,
                 f"replay of {manifest_path}: {len(found['identical'])} file(s) identical"
                 + (f" (compared by {found['compared']})" if found["compared"] != "files" else ""))
    raise_on_mismatch(found)
    exit_for_verdict(result.verdict, result.failed_budgets, result.errors)


def check_ci_outputs(junit: Path | None, summary_md: Path | None, inputs: list[Any]) -> None:
    """Refuse a --junit or --summary-md path that is an input or lies inside one (or inside --out)."""
    from compressor.atomic import check_no_overlap

    for path, flag in ((junit, "--junit"), (summary_md, "--summary-md")):
        if path is not None:
            check_no_overlap(path, inputs, flag, replaced=False)


def write_ci_outputs(report: dict[str, Any], junit: Path | None, summary_md: Path | None) -> None:
    """Write the JUnit file and append the job-page summary (each only when asked for or, for the summary, set)."""
    from compressor.ci_results import append_summary, write_junit

    if junit is not None:
        write_junit(report, junit)
    append_summary(report, summary_md)


def exit_for_verdict(verdict: str, failed: list[str], errors: list[str]) -> None:
    """Say why a verdict is not a pass and exit with its code: 7 when a measurement failed, else 5."""
    for line in errors:
        say("verify error:", line)
    for line in failed:
        say("budget failed:", line)
    if verdict == "error":
        err_console.print("  hint: the exports were kept; report.md says which measurement failed and why",
                          soft_wrap=True)
        raise typer.Exit(int(ExitCode.VERIFY_ERROR))
    if verdict == "fail":
        raise typer.Exit(int(ExitCode.VERIFY_FAILED))


def _print_plan(recipe: Any, prepared: Any, as_json: bool) -> None:
    """The `--dry-run` output: resolved recipe, stages, feasibility, preflight checks and estimates."""
    import yaml

    from compressor.preflight import describe
    from compressor.recipe import dump_recipe

    plan = prepared.plan
    stages = [{"slot": st.slot, "method": st.spec.method, "options": st.options.model_dump(mode="json"),
               "needs_calibration": st.method.needs_calibration(st.options),
               "kinds": sorted(k.value for k in st.method.kinds(st.options))} for st in plan.stages]
    if as_json:
        print_json({"recipe": dump_recipe(recipe), "stages": stages, "feasibility": prepared.rows,
                    "warnings": prepared.warnings, "preflight": prepared.preflight.to_dict()})
        return
    print("# resolved recipe")
    print(yaml.safe_dump(dump_recipe(recipe), sort_keys=False).rstrip())
    print("\n# stages")
    for i, st in enumerate(stages):
        print(f"{i + 1}. {st['slot']} {st['method']} (kinds: {', '.join(st['kinds']) or '-'}; "
              f"calibration: {'yes' if st['needs_calibration'] else 'no'})")
    print("\n# feasibility")
    for r in prepared.rows:
        gain = "faster" if r["speed"] else ("smaller only" if r["size"] else "no gain")
        print(f"- {r['export']} [{r['runtime']}]: {r['kind']} from {', '.join(r['methods'])}: {gain}"
              + (f" ({r['note']})" if r["note"] else ""))
    print("\n# preflight")
    for line in describe(recipe, prepared.preflight):
        print(f"- {line}")
    problems = prepared.preflight.problems
    print(f"\n{len(problems)} problem(s) found" + (": the build would stop at the first" if problems else
                                                     "; nothing was loaded or written"))
