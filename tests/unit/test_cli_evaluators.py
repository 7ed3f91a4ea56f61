"""`compress build/verify --evaluator lm_eval`: task metrics of both models in the report, gated by max_drop."""

from __future__ import annotations

import json

from junitparser import JUnitXml
from typer.testing import CliRunner

from compressor.cli import app
from compressor.errors import ExitCode

runner = CliRunner()
FAST = ["--calib-samples", "2", "--calib-seq-len", "16", "--eval-samples", "2", "--eval-seq-len", "32",
        "--set", "verify.latency.rounds=3", "--set", "verify.latency.prompt_tokens=8",
        "--set", "verify.latency.new_tokens=4", "--set", "verify.generate_tokens=4"]
EVAL = ["--evaluator", "lm_eval", "-V", "tasks=shakespeare_mc", "-V", "limit=10", "-V", "max_length=96"]


def test_build_reports_task_metrics_of_both_models_and_gates_on_them(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["build", "--model", str(tiny_model_dir), "--out", str(out), *FAST,
                                 "--method", "magnitude", "--export", "transformers", *EVAL,
                                 "--set", "verify.budgets.max_drop.shakespeare_mc.acc=1.0",
                                 "--junit", str(tmp_path / "junit.xml")])
    assert result.exit_code == ExitCode.OK, result.output
    report = json.loads((out / "report.json").read_text())
    v = report["verify"]["transformers"]
    task = v["metrics"]["tasks"]["shakespeare_mc.acc"]
    assert task["items"] == 10 and task["paired"] and 0 <= task["original"] <= 1 and 0 <= task["compressed"] <= 1
    assert task["drop"] == task["original"] - task["compressed"]
    (budget,) = [b for b in v["budgets"] if b["name"] == "max_drop.shakespeare_mc.acc"]
    assert budget["status"] == "pass" and budget["interval"][1] <= 1.0
    assert "shakespeare_mc.acc_norm" in v["metrics"]["tasks"]
    assert "| shakespeare_mc.acc |" in (out / "report.md").read_text()
    assert "Task metrics" in (out / "report.html").read_text()
    recipe = (out / "recipe.yaml").read_text()
    assert "lm_eval" in recipe and "max_drop" in recipe  # replay rebuilds with the same evaluator and budget
    cases = [c.name for suite in JUnitXml.fromfile(str(tmp_path / "junit.xml")) for c in suite]
    assert "max_drop.shakespeare_mc.acc" in cases


def test_evaluator_mistakes_are_usage_errors_before_any_work(tiny_model_dir, tmp_path):
    base = ["build", "--model", str(tiny_model_dir), "--out", str(tmp_path / "o"), *FAST, "--method", "magnitude",
            "--export", "transformers"]
    no_evaluator = runner.invoke(app, [*base, "-V", "limit=3"])
    assert no_evaluator.exit_code == ExitCode.USAGE and "--evaluator" in no_evaluator.output
    unknown = runner.invoke(app, [*base, "--evaluator", "no_such_evaluator"])
    assert unknown.exit_code == ExitCode.PLUGIN and "installed evaluators: lm_eval" in unknown.output  # as a method
    orphan = runner.invoke(app, [*base, "--set", "verify.budgets.max_drop.shakespeare_mc.acc=0.1"])
    assert orphan.exit_code == ExitCode.USAGE and "needs an evaluator" in orphan.output
    bad_option = runner.invoke(app, [*base, "--evaluator", "lm_eval", "-V", "shots=3"])
    assert bad_option.exit_code == ExitCode.USAGE and "shots" in bad_option.output
    assert not (tmp_path / "o").exists()
