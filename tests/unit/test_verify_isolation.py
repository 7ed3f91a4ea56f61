"""A runtime that crashes, hangs or raises during verify: a clear verify error, exports kept, exit code 7."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from compressor.cli import app
from compressor.errors import ExitCode

runner = CliRunner()
FAST = ["--calib-samples", "2", "--calib-seq-len", "16", "--eval-samples", "2", "--eval-seq-len", "32",
        "--set", "verify.latency.rounds=3", "--set", "verify.latency.prompt_tokens=8",
        "--set", "verify.latency.new_tokens=4", "--set", "verify.generate_tokens=4"]


def _build(tiny_model_dir, out, *extra):
    return runner.invoke(app, ["build", "--model", str(tiny_model_dir), "--out", str(out), *FAST,
                               "--method", "kit_drop_last", "--export", "kit_crash", *extra])


@pytest.mark.parametrize(("crash_in", "how", "signal_name"), [("score", "abort", "SIGABRT"),
                                                              ("latency", "segv", "SIGSEGV")])
def test_native_crash_in_the_worker_is_a_verify_error_and_keeps_the_export(toykit, tiny_model_dir, tmp_path,
                                                                           crash_in, how, signal_name):
    out = tmp_path / "out"
    result = _build(tiny_model_dir, out, "-E", f"crash_in={crash_in}", "-E", f"how={how}", "--max-kl", "1")
    assert result.exit_code == ExitCode.VERIFY_ERROR, result.output
    assert (out / "kit_crash" / "config.json").is_file(), "the finished export was thrown away"
    report = json.loads((out / "report.json").read_text())
    assert report["verdict"] == "error"
    v = report["verify"]["kit_crash"]
    assert v["status"] == "error" and v["error"]["model"] == "compressed"
    assert v["error"]["step"].startswith(crash_in) and v["error"]["error_type"] == "RuntimeCrashedError"
    assert signal_name in v["error"]["message"]
    assert "verify error" in result.stderr and signal_name in result.stderr
    assert "Verify error" in (out / "report.md").read_text()
    assert "Traceback" not in result.output


def test_crash_after_quality_keeps_the_quality_metrics_and_errors_only_the_speed_budget(toykit, tiny_model_dir,
                                                                                       tmp_path):
    out = tmp_path / "out"
    result = _build(tiny_model_dir, out, "-E", "crash_in=latency", "-E", "how=raise", "--max-kl", "100",
                    "--min-speedup", "1.0")
    assert result.exit_code == ExitCode.VERIFY_ERROR, result.output
    v = json.loads((out / "report.json").read_text())["verify"]["kit_crash"]
    budgets = {b["name"]: b for b in v["budgets"]}
    assert budgets["max_kl"]["status"] == "pass" and budgets["max_kl"]["value"] == v["metrics"]["kl"]
    assert v["metrics"]["perplexity"] != v["metrics"]["perplexity_original"]  # both models were scored
    assert budgets["min_speedup"]["status"] == "error" and "not measured" in budgets["min_speedup"]["detail"]
    assert v["error"]["error_type"] == "VerifyError" and "raised on purpose" in v["error"]["message"]


def test_a_hung_runtime_is_stopped_at_its_time_limit(toykit, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    result = _build(tiny_model_dir, out, "-E", "crash_in=generate", "-E", "how=hang", "-E", "request_timeout_s=3")
    assert result.exit_code == ExitCode.VERIFY_ERROR, result.output
    v = json.loads((out / "report.json").read_text())["verify"]["kit_crash"]
    assert v["error"]["error_type"] == "RuntimeTimeoutError" and "no reply within 3 s" in v["error"]["message"]


def test_the_reference_runtime_failing_to_load_is_reported_as_the_original_model(toykit, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    result = _build(tiny_model_dir, out, "-E", "crash_in=load", "-E", "how=raise", "-E", "model=original")
    assert result.exit_code == ExitCode.VERIFY_ERROR, result.output
    v = json.loads((out / "report.json").read_text())["verify"]["kit_crash"]
    assert v["error"]["model"] == "original" and v["error"]["step"] == "load"
    assert "raised on purpose" in v["error"]["message"]


def test_the_next_build_with_force_succeeds_after_a_verify_error(toykit, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    assert _build(tiny_model_dir, out, "-E", "crash_in=score").exit_code == ExitCode.VERIFY_ERROR
    result = runner.invoke(app, ["build", "--model", str(tiny_model_dir), "--out", str(out), *FAST, "--force",
                                 "--method", "kit_drop_last", "--export", "kit_hf"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "report.json").read_text())["verdict"] == "pass"
