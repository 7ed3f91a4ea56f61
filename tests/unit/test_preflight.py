"""Preflight: runtimes, exporter refusals and disk space are checked before any weights are loaded."""

from __future__ import annotations

import json
from collections import namedtuple

import pytest
from typer.testing import CliRunner

from compressor.cli import app
from compressor.errors import ExitCode

runner = CliRunner()


@pytest.fixture
def no_weights(monkeypatch):
    """Fail the test if the build loads any weights (preflight must stop it first)."""
    import compressor.pipeline

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before preflight stopped the build")

    monkeypatch.setattr(compressor.pipeline, "load_model", refuse)


def _build(model, out, *args):
    return runner.invoke(app, ["build", "--model", str(model), "--out", str(out), *args])


def test_missing_verify_runtime_stops_before_loading(tiny_model_dir, tmp_path, monkeypatch, no_weights):
    import compressor_exporters.vllm.exporter as vllm_exporter

    monkeypatch.setattr(vllm_exporter, "vllm_version", lambda: None)
    result = _build(tiny_model_dir, tmp_path / "out", "--method", "magnitude", "--sparsity", "0.5",
                    "--export", "vllm")
    assert result.exit_code == ExitCode.PLUGIN, result.output
    assert "verified in vLLM, which is not installed" in result.stderr and "hint:" in result.stderr
    assert not (tmp_path / "out").exists()


def test_without_verify_a_missing_verify_runtime_is_fine(tiny_model_dir, tmp_path, monkeypatch):
    import compressor_exporters.vllm.exporter as vllm_exporter

    monkeypatch.setattr(vllm_exporter, "vllm_version", lambda: None)
    result = _build(tiny_model_dir, tmp_path / "out", "--export", "vllm", "--no-verify")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "vllm" / "config.json").is_file()


def test_k_quant_without_llama_cpp_stops_even_without_verify(tiny_model_dir, tmp_path, monkeypatch, no_weights):
    import compressor_exporters.gguf.runtime as gguf_runtime

    monkeypatch.setattr(gguf_runtime, "llama_cpp_version", lambda: None)
    result = _build(tiny_model_dir, tmp_path / "out", "--export", "gguf", "-E", "outtype=Q4_K_M", "--no-verify")
    assert result.exit_code == ExitCode.PLUGIN, result.output
    assert "llama.cpp's quantizer" in result.stderr


def test_exporter_refuses_per_layer_head_cuts_before_any_work(tiny_model_dir, tmp_path, no_weights):
    result = _build(tiny_model_dir, tmp_path / "out", "--method", "surgeon", "-O", "structure=structured",
                    "-O", "sparsity=0.3", "-O", "kv_groups=true", "--export", "vllm")
    assert result.exit_code == ExitCode.USAGE, result.output
    assert "pad_query_heads" in result.stderr
    result = _build(tiny_model_dir, tmp_path / "out", "--method", "surgeon", "-O", "structure=structured",
                    "-O", "sparsity=0.3", "-O", "kv_groups=true", "--export", "vllm", "-E", "pad_query_heads=true",
                    "--dry-run")
    assert result.exit_code == 0, result.output


def test_not_enough_disk_is_a_resource_error(tiny_model_dir, tmp_path, monkeypatch, no_weights):
    import compressor.preflight

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(compressor.preflight.shutil, "disk_usage", lambda p: usage(10**6, 10**6 - 1000, 1000))
    result = _build(tiny_model_dir, tmp_path / "out", "--export", "onnx")
    assert result.exit_code == ExitCode.RESOURCE, result.output
    assert "GiB is free" in result.stderr and "verify reference" in result.stderr


def test_dry_run_prints_the_plan_and_writes_nothing(tiny_model_dir, tmp_path, no_weights):
    out = tmp_path / "out"
    result = _build(tiny_model_dir, out, "--method", "wanda", "--sparsity", "0.5", "--export", "onnx",
                    "-E", "quantize=int8", "--dry-run")
    assert result.exit_code == 0, result.output
    text = result.stdout
    for needle in ("# resolved recipe", "reference: full_precision", "# stages", "prune wanda (kinds: unstructured",
                   "# feasibility", "# preflight", "runtime ONNX Runtime: ok", "disk: about",
                   "memory, prune wanda: calibration memory estimate", "0 problem(s) found"):
        assert needle in text, needle
    assert not out.exists() and not list(tmp_path.iterdir())


def test_dry_run_json_lists_the_problems_and_exits_with_the_first(tiny_model_dir, tmp_path, monkeypatch,
                                                                  no_weights):
    import compressor_exporters.vllm.exporter as vllm_exporter

    monkeypatch.setattr(vllm_exporter, "vllm_version", lambda: None)
    result = _build(tiny_model_dir, tmp_path / "out", "--export", "vllm", "--export", "onnx", "--dry-run", "--json")
    assert result.exit_code == ExitCode.PLUGIN
    plan = json.loads(result.stdout)
    runtimes = {r["export"]: r["status"] for r in plan["preflight"]["runtimes"]}
    assert runtimes == {"vllm": "missing", "onnx": "ok"}
    assert plan["preflight"]["problems"][0]["exit_code"] == ExitCode.PLUGIN
    assert plan["preflight"]["model"]["parameters"] > 0
