"""Issue 2 end to end on the real SmolLM2: layer_drop 4 layers, export for vLLM, verify in vLLM."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from compressor.cli import app
from compressor.errors import ExitCode

pytestmark = [pytest.mark.slow, pytest.mark.vllm]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo_build(needs_vllm, tmp_path_factory):
    """`make demo`'s own recipe (layer_drop 4, vLLM export, verify in vLLM) with fewer samples and rounds."""
    out = tmp_path_factory.mktemp("demo-shaped") / "out"
    result = CliRunner().invoke(app, [
        "build", "--recipe", str(REPO / "deploy" / "recipes" / "demo.yaml"),
        "--out", str(out), "--calib-samples", "8", "--calib-seq-len", "256",
        "--eval-samples", "4", "--eval-seq-len", "256",
        "--set", "verify.latency.rounds=3", "--set", "verify.latency.prompt_tokens=64",
        "--set", "verify.latency.new_tokens=16", "--set", "verify.generate_tokens=8",
        "--min-top1", "1.0",  # no pruned model agrees with its original everywhere
        # task accuracy in vLLM too, gated: an 8-item drop budget of 0 is failed or inconclusive, never passed
        # unless every answer is the same
        "--evaluator", "lm_eval", "-V", "limit=8", "-V", "max_length=128", "-V", "batch_size=256",
        "--set", "verify.budgets.max_drop.shakespeare_mc.acc_norm=0",
    ])
    return out, result


def test_layer_drop_vllm_build_verifies_in_vllm_and_an_impossible_budget_fails(demo_build):
    out, result = demo_build
    assert result.exit_code == ExitCode.VERIFY_FAILED, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["layers"] == 26
    config = json.loads((out / "vllm" / "config.json").read_text())
    assert config["num_hidden_layers"] == 26
    metrics = report["verify"]["vllm"]["metrics"]
    assert "vllm" in json.dumps(metrics["runtime"]).lower(), "the compressed model was not measured in vLLM"
    # measured: 26.58 -> 46.03 (1.732x) in vLLM, 26.60 -> 46.10 (1.733x) in PyTorch fp32 on the same windows without
    # the chosen layers 13, 14, 17, 25; runtimes agree to 0.2%, so +-5% catches another choice of layers
    assert math.isfinite(metrics["perplexity"]) and 1.65 < metrics["perplexity"] / metrics["perplexity_original"] < 1.82
    assert metrics["latency"]["decode_tok_s_median"] > 0
    budgets = {b["name"]: b for b in report["verify"]["vllm"]["budgets"]}
    assert budgets["min_top1_agreement"]["status"] == "fail"
    task = metrics["tasks"]["shakespeare_mc.acc_norm"]
    assert task["items"] == 8 and task["paired"] and 0 <= task["original"] <= 1
    drop = budgets["max_drop.shakespeare_mc.acc_norm"]
    same = task["drop"] == 0 and task["drop_stderr"] == 0
    assert drop["status"] == ("pass" if same else "fail" if drop["interval"][0] > 0 else "inconclusive"), drop
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["stages"][0]["selected"]["removed_layers"]) == 4


def test_vllms_scoring_and_generation_progress_reaches_the_build_log(demo_build):
    """vLLM runs in a worker process; its per-request progress is relayed to the host's log (a CI log: lines)."""
    _, result = demo_build
    for model in ("original", "compressed"):
        assert f"> the {model} model: vLLM: scoring windows: 4/4 (100%)" in result.stderr, result.stderr[-3000:]
        assert f"> the {model} model: vLLM: generating: " in result.stderr


def test_the_demo_recipes_report_renders_in_chromium_with_the_removed_layers_plotted(demo_build, chromium):
    from browser import assert_renders

    out, _ = demo_build
    summary = json.loads((out / "report.json").read_text())["summary"]
    removed = set(range(30)) - {r["original_index"] for r in summary["layer_parameters"]}
    assert len(removed) == 4 and len(summary["layer_parameters_original"]) == 30
    plots = sorted(p.name for p in (out / "plots").iterdir())
    assert plots == ["latency-vllm.png", "layers.png", "per-position.png"]
    assert_renders(chromium, out / "report.html", len(plots))
