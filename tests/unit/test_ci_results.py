"""`--junit` and `--summary-md`: what a CI system reads from `compress build` and `compress verify`.

The JUnit file is read back with junitparser and validated against the schema Jenkins' xUnit
plugin uses (tests/fixtures/junit); the job-page summary goes to --summary-md or $GITHUB_STEP_SUMMARY.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from junitparser import Error, Failure, JUnitXml, Skipped
from typer.testing import CliRunner

from compressor.ci_results import junit_xml, summary_markdown
from compressor.cli import app
from compressor.errors import ExitCode

runner = CliRunner()
SCHEMA = Path(__file__).parents[1] / "fixtures" / "junit" / "jenkins-junit-10.xsd"
FAST = ["--calib-samples", "2", "--calib-seq-len", "16", "--eval-samples", "2", "--eval-seq-len", "32",
        "--set", "verify.latency.rounds=3", "--set", "verify.latency.prompt_tokens=8",
        "--set", "verify.latency.new_tokens=4", "--set", "verify.generate_tokens=4"]


def _validate(path: Path) -> None:
    import xmlschema

    xmlschema.XMLSchema(str(SCHEMA)).validate(str(path))


def _cases(path: Path) -> dict[str, dict[str, object]]:
    """{suite: {"properties": {...}, case name: result or None}} read with junitparser."""
    out: dict[str, dict[str, object]] = {}
    for suite in JUnitXml.fromfile(str(path)):
        entry: dict[str, object] = {"properties": {p.name: p.value for p in suite.properties()}}
        for case in suite:
            entry[case.name] = case.result[0] if case.result else None
        out[suite.name] = entry
    return out


def test_failed_budget_is_a_failed_case_with_its_numbers(toykit, tiny_model_dir, tmp_path, monkeypatch):
    junit, summary, env_summary = tmp_path / "ci" / "junit.xml", tmp_path / "summary.md", tmp_path / "step.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(env_summary))
    out = tmp_path / "out"
    result = runner.invoke(app, ["build", "--model", str(tiny_model_dir), "--out", str(out), *FAST,
                                 "--method", "kit_drop_last", "--export", "kit_hf", "--min-top1", "1.0",
                                 "--max-size-ratio", "10", "--junit", str(junit), "--summary-md", str(summary)])
    assert result.exit_code == ExitCode.VERIFY_FAILED, result.output
    _validate(junit)
    report = json.loads((out / "report.json").read_text())
    budgets = {b["name"]: b for b in report["verify"]["kit_hf"]["budgets"]}
    cases = _cases(junit)["kit_hf"]
    failed = cases["min_top1_agreement"]
    assert isinstance(failed, Failure)
    top1 = budgets["min_top1_agreement"]
    assert top1["status"] == "fail" and top1["value"] < 1.0
    assert f"measured {top1['value']:.6g}, threshold 1" in failed.message
    assert cases["max_size_ratio"] is None  # passed
    props = cases["properties"]
    assert props["verdict"] == "fail"
    assert float(props["perplexity"]) == pytest.approx(report["verify"]["kit_hf"]["metrics"]["perplexity"], rel=1e-5)
    # the job-page table went to --summary-md, not to $GITHUB_STEP_SUMMARY
    text = summary.read_text()
    assert "FAIL" in text and "min_top1_agreement" in text and "`kit_hf`" in text
    assert not env_summary.exists()


def test_verify_writes_junit_and_appends_to_the_step_summary(toykit, tiny_model_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    built = runner.invoke(app, ["build", "--model", str(tiny_model_dir), "--out", str(out), *FAST,
                                "--method", "kit_drop_last", "--export", "kit_hf", "--no-verify"])
    assert built.exit_code == 0, built.output
    step = tmp_path / "step.md"
    step.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step))
    junit = tmp_path / "verify.xml"
    result = runner.invoke(app, ["verify", str(out / "kit_hf"), "--original", str(tiny_model_dir), "--eval-samples",
                                 "2", "--eval-seq-len", "32", "--set", "verify.latency.rounds=3",
                                 "--set", "verify.latency.prompt_tokens=8", "--set", "verify.latency.new_tokens=4",
                                 "--set", "verify.generate_tokens=4", "-b", "max_size_ratio=10", "--junit", str(junit)])
    assert result.exit_code == 0, result.output
    _validate(junit)
    assert _cases(junit)["kit_hf"]["max_size_ratio"] is None
    text = step.read_text()
    assert text.startswith("earlier step\n") and "PASS" in text  # appended, not replaced


def test_inconclusive_is_skipped_and_unmeasured_is_an_error(tmp_path):
    """Every status maps to its JUnit result; a measurement that failed before any budget is one error case."""
    def budget(name, status, value, limit=1.2):
        return {"name": name, "limit": limit, "value": value, "status": status, "detail": f"{name} detail",
                "interval": None, "rounds_to_settle": None, "passed": status == "pass"}
    report = {"verdict": "error", "model": "m", "verify": {
        "a": {"status": "fail", "metrics": {"decode_speedup": 1.1, "decode_speedup_ci": [0.9, 1.3], "latency": {}},
              "budgets": [budget("min_speedup", "inconclusive", 1.1), budget("max_kl", "error", None, 0.1)],
              "error": None, "on_inconclusive": "warn"},
        "b": {"status": "error", "metrics": {}, "budgets": [],
              "error": {"step": "load", "model": "compressed", "error_type": "RuntimeUnavailableError",
                        "message": "engine died\nmore", "hint": "look"}, "on_inconclusive": "fail"}}}
    path = tmp_path / "j.xml"
    path.write_bytes(junit_xml(report).tostring())
    _validate(path)
    cases = _cases(path)
    skipped = cases["a"]["min_speedup"]
    assert isinstance(skipped, Skipped) and "does not block the release" in skipped.message
    assert "measured 1.1, threshold 1.2" in skipped.message
    assert isinstance(cases["a"]["max_kl"], Error) and "not measured" in cases["a"]["max_kl"].message
    assert cases["a"]["properties"]["decode_speedup_ci"] == "[0.9, 1.3]" and "latency" not in cases["a"]["properties"]
    load = cases["b"]["measure: load"]
    assert isinstance(load, Error) and load.type == "RuntimeUnavailableError" and "engine died" in load.message
    suites = {s.name: s for s in JUnitXml.fromfile(str(path))}
    assert (suites["a"].tests, suites["a"].errors, suites["a"].skipped, suites["b"].errors) == (2, 1, 1, 1)
    assert "ERROR" in summary_markdown(report)


def test_junit_inside_an_input_is_refused(toykit, tiny_model_dir, tmp_path):
    result = runner.invoke(app, ["build", "--model", str(tiny_model_dir), "--out", str(tmp_path / "out"), *FAST,
                                 "--method", "kit_drop_last", "--export", "kit_hf",
                                 "--junit", str(tiny_model_dir / "junit.xml")])
    assert result.exit_code == ExitCode.USAGE, result.output
    assert "--junit" in result.output and not (tiny_model_dir / "junit.xml").exists()


def test_quiet_prints_only_the_verdict_and_log_json_has_each_step(toykit, tiny_model_dir, tmp_path):
    events = tmp_path / "events.jsonl"
    result = runner.invoke(app, ["build", "--model", str(tiny_model_dir), "--out", str(tmp_path / "out"), *FAST,
                                 "--method", "kit_drop_last", "--export", "kit_hf", "--max-size-ratio", "10",
                                 "--quiet", "--log-json", str(events)])
    assert result.exit_code == 0, result.output
    assert result.stdout == "verdict: PASS\n" and result.stderr == ""
    records = [json.loads(line) for line in events.read_text().splitlines()]
    ends = {r["step"]: r for r in records if r["event"] == "step_end"}
    assert list(ends) == ["load", "prune kit_drop_last", "export kit_hf", "verify"]
    assert all(r["seconds"] >= 0 and r["peak_rss_mb"] > 100 for r in ends.values())
    assert ends["verify"]["seconds"] > 0.1
    starts = [r["step"] for r in records if r["event"] == "step_start"]
    assert starts == list(ends)
    assert records[-1]["event"] == "verdict" and records[-1]["exports"] == {"kit_hf": "pass"}


def test_verbose_prints_each_step_with_its_usage(toykit, tiny_model_dir, tmp_path):
    result = runner.invoke(app, ["build", "--model", str(tiny_model_dir), "--out", str(tmp_path / "out"), *FAST,
                                 "--method", "kit_drop_last", "--export", "kit_hf", "--no-verify", "--verbose"])
    assert result.exit_code == 0, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("· step_end: ")]
    assert len(lines) == 3 and all("seconds=" in ln and "peak_rss_mb=" in ln for ln in lines)
    both = runner.invoke(app, ["build", "--model", str(tiny_model_dir), "--out", str(tmp_path / "o2"), "-q", "-v",
                               "--method", "kit_drop_last", "--export", "kit_hf"])
    assert both.exit_code == ExitCode.USAGE and "--quiet and --verbose" in both.output


def test_loops_report_progress_as_lines_with_percentages_in_a_ci_log(tmp_path):
    """A non-terminal stderr gets a line per tenth of each long loop (here the calibration layers)."""
    from compressor.testing import tiny_family, tiny_tokenizer

    model = tmp_path / "model"
    tiny_family("llama3", layers=4, tokenizer=tiny_tokenizer()).save_hf(model)
    result = runner.invoke(app, ["build", "-m", str(model), "--method", "wanda", "--sparsity", "0.5", "-e", "gguf",
                                 "--calib-samples", "2", "--calib-seq-len", "16", "--no-verify",
                                 "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("> calibration: layers: ")]
    assert lines == [f"> calibration: layers: {i}/4 ({25 * i}%)" for i in range(1, 5)]
    assert [ln for ln in result.stderr.splitlines() if ln.startswith("> gguf: layers: 4/4 (100%)")]
    assert "\x1b[" not in result.stderr and "\r" not in result.stderr  # no control characters in a CI log


def test_a_loop_inside_a_loop_shares_the_terminal_progress_display():
    """rich allows one live display: an inner loop's bar joins the outer one's and leaves when done."""
    import io

    from rich.console import Console

    import compressor.cli.common as common
    from compressor.progress import set_renderer, steps

    screen = io.StringIO()
    console, common.err_console = common.err_console, Console(file=screen, force_terminal=True, width=100)
    set_renderer(common._bar)
    try:
        seen = [(i, j) for i in steps(range(3), "surgeon: shots") for j in steps(range(4), "surgeon: batches")]
    finally:
        set_renderer(None)
        common.err_console = console
    assert len(seen) == 12 and common._LIVE == []
    assert "surgeon: shots" in screen.getvalue() and "surgeon: batches" in screen.getvalue()


def test_verify_shows_its_runtime_workers_scoring_and_generation_progress(tmp_path):
    """Scoring and generation run in worker processes; each step reaches the host's CI log as a line."""
    import re

    from compressor.testing import tiny_family, tiny_tokenizer

    model = tmp_path / "model"
    tiny_family("llama3", layers=2, tokenizer=tiny_tokenizer()).save_hf(model)
    result = runner.invoke(app, ["build", "-m", str(model), "--method", "magnitude", "--sparsity", "0.3", "-e", "gguf",
                                 "--eval-samples", "4", "--eval-seq-len", "32", "--set", "verify.latency.rounds=3",
                                 "--set", "verify.latency.prompt_tokens=16", "--set", "verify.latency.new_tokens=8",
                                 "--set", "verify.generate_tokens=4", "--set", "verify.latency.on_inconclusive=warn",
                                 "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    for model_name in ("original", "compressed"):
        scoring = [ln for ln in lines if ln.startswith(f"> the {model_name} model: llama.cpp: scoring windows: ")]
        assert scoring == [f"> the {model_name} model: llama.cpp: scoring windows: {i}/4 ({25 * i}%)"
                           for i in range(1, 5)], lines
        generating = [ln for ln in lines if re.match(rf"> the {model_name} model: llama.cpp: generating: \d+/\d+", ln)]
        assert generating and generating[-1].endswith("(100%)"), lines
    assert "\x1b[" not in result.stderr


def test_the_onnx_export_shows_its_phases_and_the_weights_it_streams_from_disk(tmp_path):
    """The ONNX export reports its phases; with the weights on disk, each weight read and written is a step."""
    import re

    from compressor.testing import tiny_family, tiny_tokenizer

    model = tmp_path / "model"
    tiny_family("llama3", layers=2, tokenizer=tiny_tokenizer()).save_hf(model)
    result = runner.invoke(app, ["build", "-m", str(model), "--method", "magnitude", "--sparsity", "0.3", "-e", "onnx",
                                 "--offload", "disk", "--no-verify", "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert "> onnx: trace and write, validate: 1/2 (50%)" in lines and "> onnx: trace and write, validate: 2/2 (100%)" in lines
    weights = [ln for ln in lines if ln.startswith("> onnx: weights read from disk and written: ")]
    assert weights and re.fullmatch(r"> onnx: weights read from disk and written: (\d+)/\1 \(100%\)", weights[-1]), lines
