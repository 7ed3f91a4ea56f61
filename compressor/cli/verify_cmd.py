"""``compress verify``: the verify gate on its own, so it can run on the target host."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from compressor.cli.build_cmd import (BUDGET_FLAGS, apply_evaluators, check_ci_outputs, exit_for_verdict, show_verdict,
                                      write_ci_outputs)
from compressor.cli.common import handle_errors, output_mode, progress_lines
from compressor.plugin_manager import load_registry
from compressor.recipe import load_recipe_dict, parse_assignment, recipe_from_dict, set_path


@handle_errors
def verify_command(
    artifact: Path = typer.Argument(..., help="An export directory written by `compress build`."),
    original: str = typer.Option(..., "--original", help="The original model (directory, .gguf, or 'smollm2-135m')."),
    fmt: str | None = typer.Option(None, "--format", help="Export format, if the directory has no compressor record."),
    recipe: Path | None = typer.Option(None, "--recipe", "-r", help="Take data, verify settings and budgets from it."),
    eval_data: str | None = typer.Option(None, "--eval", help="Evaluation data."),
    eval_samples: int | None = typer.Option(None, "--eval-samples"),
    eval_seq_len: int | None = typer.Option(None, "--eval-seq-len"),
    device: str | None = typer.Option(None, "--device", help="Device for the runtimes (cpu or cuda)."),
    budget: list[str] = typer.Option([], "--budget", "-b", help=f"Budget NAME=VALUE; names: {', '.join(BUDGET_FLAGS)}, "
                                                                "max_drop.TASK.METRIC."),
    evaluator: list[str] = typer.Option([], "--evaluator", help="Task evaluator run on both models (repeatable)."),
    evaluator_option: list[str] = typer.Option([], "--evaluator-option", "-V", help="Evaluator option KEY=VALUE."),
    sets: list[str] = typer.Option([], "--set", help="Set any recipe field: dotted.key=value."),
    report: Path | None = typer.Option(None, "--report", help="Also write the JSON report to this file."),
    report_html: Path | None = typer.Option(None, "--report-html", help="Also write a self-contained HTML report "
                                                                         "(verdict, budgets, metrics, plots) here."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle"),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code"),
    as_json: bool = typer.Option(False, "--json", help="Print the report on stdout."),
    junit: Path | None = typer.Option(None, "--junit", help="Write the verdict as JUnit XML (a case per budget)."),
    summary_md: Path | None = typer.Option(None, "--summary-md", help="Append a Markdown verdict table to this file "
                                                                       "(default: $GITHUB_STEP_SUMMARY when set)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the verdict (and errors)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also print each step's timing and memory, and debug logs."),
    log_json: Path | None = typer.Option(None, "--log-json", help="Append structured events (steps, timings, peak "
                                                                   "memory, warnings, verdict) to this file as JSON lines."),
) -> None:
    """Measure ARTIFACT against the original model in the artifact's runtime; exit 5 on a failed budget, 7 on an error."""
    with output_mode(quiet, verbose, log_json):
        registry = load_registry()
        raw: dict[str, Any] = load_recipe_dict(recipe) if recipe else {}
        raw.pop("prune", None), raw.pop("heal", None), raw.pop("quantize", None), raw.pop("export", None)
        for key, value in {"model": original, "data.evaluation.source": eval_data,
                           "data.evaluation.samples": eval_samples, "data.evaluation.seq_len": eval_seq_len,
                           "verify.device": device, "allow_pickle": True if allow_pickle else None,
                           "trust_remote_code": True if trust_remote_code else None}.items():
            if value is not None:
                set_path(raw, key, value)
        for b in budget:
            key, value = parse_assignment(b)
            set_path(raw, f"verify.budgets.{key}", value)
        apply_evaluators(raw, evaluator, evaluator_option, registry)
        for s in sets:
            key, value = parse_assignment(s)
            set_path(raw, key, value)
        parsed = recipe_from_dict(raw, f" {recipe}" if recipe else "")
        from compressor.atomic import check_no_overlap, write_text_atomic
        from compressor.pipeline import recipe_inputs, verify_artifact

        inputs = [artifact, *recipe_inputs(parsed), *([recipe] if recipe else [])]
        for path, flag in ((report, "--report"), (report_html, "--report-html")):
            if path is not None:
                check_no_overlap(path, inputs, flag)
        check_ci_outputs(junit, summary_md, inputs)

        with progress_lines("verifying") as progress:
            result = verify_artifact(artifact, parsed, registry, fmt, log=progress)
        if report is not None:
            write_text_atomic(report, json.dumps(result, indent=2, default=str))
        if report_html is not None:
            write_text_atomic(report_html, verify_report_html(result))
        write_ci_outputs(result, junit, summary_md)
        show_verdict(result, as_json)
        from compressor.verify import failure_lines

        exit_for_verdict(result["verdict"], *failure_lines(result["verify"]))


def verify_report_html(result: dict[str, Any]) -> str:
    """``compress verify``'s result as one self-contained HTML page, like a build's report.html."""
    import datetime

    from compressor.report_html import render_html
    from compressor.report_plots import render_plots

    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return render_html({"created": created}, result, render_plots(result))
