"""`compress build` / `verify` end to end on a tiny model: outputs, reports, errors and exit codes."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from compressor.cli import app
from compressor.errors import ExitCode
from compressor.model_loading import _hash_files

runner = CliRunner()
FAST = ["--calib-samples", "2", "--calib-seq-len", "16", "--eval-samples", "2", "--eval-seq-len", "32",
        "--set", "verify.latency.rounds=3", "--set", "verify.latency.prompt_tokens=8",
        "--set", "verify.latency.new_tokens=4", "--set", "verify.generate_tokens=4"]


def _build(tiny_model_dir, out, *extra):
    return runner.invoke(app, ["build", "--model", str(tiny_model_dir), "--out", str(out), *FAST, *extra])


def test_build_writes_artifact_reports_and_manifest(toykit, tiny_model_dir, tmp_path):
    before = _hash_files(sorted(tiny_model_dir.iterdir()))
    out = tmp_path / "out"
    result = _build(tiny_model_dir, out, "--method", "kit_drop_last", "-O", "layers=1", "--export", "kit_hf",
                    "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["verdict"] == "pass" and report["summary"]["layers"] == 3
    assert sorted(p.name for p in out.iterdir()) == ["kit_hf", "manifest.json", "plots", "recipe.yaml", "report.html",
                                                     "report.json", "report.md"]
    config = json.loads((out / "kit_hf" / "config.json").read_text())
    assert config["num_hidden_layers"] == 3
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["input"]["model"]["sha256"] and manifest["input"]["data"]["evaluation"]["sha256"]
    assert manifest["versions"]["torch"] and manifest["stages"][0]["selected"]["dropped_layers"] == [3]
    assert any(p["dist"] == "compressor-toykit" and p["used"] for p in manifest["plugins"])
    assert "peak_rss_mb" in manifest["usage"]["prune kit_drop_last"]
    metrics = report["verify"]["kit_hf"]["metrics"]
    _assert_metrics_match_pytorch(metrics, tiny_model_dir, out / "kit_hf")
    assert _hash_files(sorted(tiny_model_dir.iterdir())) == before, "the input model was modified"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")], "staging left behind"


def _assert_metrics_match_pytorch(metrics, original_dir, compressed_dir):
    """The gate's figures equal the same metrics computed here in PyTorch on the same windows (fp32 exports)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from compressor.data import load_windows
    from compressor.metrics import perplexity_from_scores, top1_agreement, topk_kl
    from compressor.torch_runtime import TorchRuntime

    windows = load_windows("shakespeare", "evaluation", AutoTokenizer.from_pretrained(original_dir), 2, 32, seed=0)
    ref = TorchRuntime(AutoModelForCausalLM.from_pretrained(original_dir).eval()).score(windows, top_k=20)
    cand = TorchRuntime(AutoModelForCausalLM.from_pretrained(compressed_dir).eval()).score(windows, top_k=20)
    assert metrics["perplexity_original"] == pytest.approx(perplexity_from_scores(ref), rel=1e-5)
    assert metrics["perplexity"] == pytest.approx(perplexity_from_scores(cand), rel=1e-5)
    assert metrics["top1_agreement"] == pytest.approx(top1_agreement(ref, cand), abs=1e-9)
    assert metrics["kl"] == pytest.approx(topk_kl(ref, cand), rel=1e-4, abs=1e-7)
    assert metrics["perplexity"] != metrics["perplexity_original"]  # dropping a layer changed the model


def test_impossible_budget_fails_with_exit_code_5_and_keeps_the_report(toykit, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    result = _build(tiny_model_dir, out, "--method", "kit_drop_last", "--export", "kit_hf",
                    "--min-top1", "1.0", "--max-ppl-increase", "0")
    assert result.exit_code == ExitCode.VERIFY_FAILED, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["verdict"] == "fail"
    failed = [b for b in report["verify"]["kit_hf"]["budgets"] if not b["passed"]]
    assert failed and "missed by" in failed[0]["detail"]
    assert "budget failed" in result.stderr


def test_non_empty_output_is_refused_unless_forced(toykit, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    result = _build(tiny_model_dir, out, "--export", "kit_hf", "--no-verify")
    assert result.exit_code == ExitCode.USAGE and "not empty" in result.stderr
    assert (out / "keep.txt").read_text() == "precious"
    result = _build(tiny_model_dir, out, "--export", "kit_hf", "--no-verify", "--force")
    assert result.exit_code == 0, result.output
    assert not (out / "keep.txt").exists() and (out / "kit_hf" / "config.json").exists()


@pytest.mark.parametrize("args,code,needle", [
    (["--method", "nope"], ExitCode.PLUGIN, "unknown method 'nope'"),
    (["--export", "nope"], ExitCode.PLUGIN, "unknown export format 'nope'"),
    (["--method", "kit_explode", "--export", "kit_hf"], ExitCode.PLUGIN, "kaboom inside the plugin"),
    (["--method", "kit_drop_last", "-O", "layers=0", "--export", "kit_hf"], ExitCode.USAGE, "greater than or equal"),
    (["--method", "kit_drop_last", "-O", "colour=red", "--export", "kit_hf"], ExitCode.USAGE, "colour"),
    (["--set", "modle=x"], ExitCode.USAGE, "unknown key"),
    (["--export", "kit_diskfull"], ExitCode.RESOURCE, "disk filled up"),
    (["--method", "kit_interrupt", "--export", "kit_hf"], ExitCode.INTERRUPTED, "interrupted"),
])
def test_errors_have_messages_exit_codes_and_leave_nothing(toykit, tiny_model_dir, tmp_path, args, code, needle):
    out = tmp_path / "out"
    result = _build(tiny_model_dir, out, *args)
    assert result.exit_code == code, result.output
    assert needle in result.stderr
    assert "Traceback" not in result.output + result.stderr
    assert not out.exists(), "a failed build must leave no output"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_missing_corrupt_and_pickle_models_are_input_errors(toykit, tmp_path, tiny_model_dir):
    result = _build(tmp_path / "nowhere", tmp_path / "o1", "--export", "kit_hf")
    assert result.exit_code == ExitCode.INPUT and "not found" in result.stderr
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (corrupt / name).write_text((tiny_model_dir / name).read_text())
    (corrupt / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    result = _build(corrupt, tmp_path / "o2", "--export", "kit_hf")
    assert result.exit_code == ExitCode.INPUT and "could not load" in result.stderr
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"not really")
    result = _build(pickled, tmp_path / "o3", "--export", "kit_hf")
    assert result.exit_code == ExitCode.INPUT and "--allow-pickle" in result.stderr
    assert "Traceback" not in result.stderr


def test_strict_refuses_a_build_that_cannot_get_faster(toykit, tiny_model_dir, tmp_path):
    result = _build(tiny_model_dir, tmp_path / "o", "--method", "kit_sparse", "--export", "kit_hf")
    assert result.exit_code == 0, result.output
    assert "no speed-up" in result.stderr
    result = _build(tiny_model_dir, tmp_path / "o2", "--method", "kit_sparse", "--export", "kit_hf", "--strict")
    assert result.exit_code == ExitCode.USAGE and "--strict" in result.stderr


def test_verify_command_reopens_an_artifact(toykit, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    assert _build(tiny_model_dir, out, "--method", "kit_drop_last", "--export", "kit_hf", "--no-verify").exit_code == 0
    args = ["verify", str(out / "kit_hf"), "--original", str(tiny_model_dir), "--eval-samples", "2",
            "--eval-seq-len", "32", "--set", "verify.latency.rounds=3", "--set", "verify.generate_tokens=4",
            "--report", str(tmp_path / "v.json")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "v.json").read_text())
    assert data["format"] == "kit_hf" and data["verdict"] == "pass"
    result = runner.invoke(app, args + ["--budget", "min_top1_agreement=1.0"])
    assert result.exit_code == ExitCode.VERIFY_FAILED


def test_debug_shows_traceback(toykit, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(os.environ, "COMPRESSOR_DEBUG", "1")
    result = _build(tiny_model_dir, tmp_path / "o", "--method", "kit_explode", "--export", "kit_hf")
    assert result.exit_code == ExitCode.PLUGIN
    assert "Traceback" in result.stderr


def test_structured_surgeon_build_exports_per_layer_sizes_to_onnx(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    result = _build(tiny_model_dir, out, "--method", "surgeon", "-O", "structure=structured", "-O", "sparsity=0.3",
                    "-O", "shots=2", "-O", "width_multiple=16", "--export", "onnx", "--no-verify", "--json")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    sizes = manifest["stages"][0]["selected"]["layer_sizes"]
    assert len(sizes) == 4 and len({s["intermediate_size"] for s in sizes}) > 1  # per-layer widths
    report = json.loads((out / "report.json").read_text())
    assert [s["shot"] for s in report["stages"][0]["details"]["shots"]] == [1, 2]
    io = json.loads(next((out / "onnx").glob("*.json")).read_text())
    assert io


def test_surgeon_option_out_of_range_is_a_usage_error(tiny_model_dir, tmp_path):
    result = _build(tiny_model_dir, tmp_path / "out", "--method", "surgeon", "-O", "sparsity=1.5", "--export", "onnx")
    assert result.exit_code == ExitCode.USAGE, result.output
    assert "sparsity" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("reference", ["full_precision", "same_options"])
def test_exporter_quantization_is_measured_against_full_precision_unless_asked(tiny_model_dir, tmp_path, reference):
    """ONNX int8: the default reference is the fp32 graph; same_options gives the old int8-against-int8."""
    out = tmp_path / "out"
    result = _build(tiny_model_dir, out, "--export", "onnx", "-E", "quantize=int8",
                    "--set", f"verify.reference={reference}")
    assert result.exit_code == 0, result.output
    v = json.loads((out / "report.json").read_text())["verify"]["onnx"]
    assert v["reference"]["mode"] == reference
    if reference == "full_precision":
        assert v["reference"]["options"]["quantize"] == "none"
        assert v["reference"]["differs_in"] == {"quantize": {"compressed": "int8", "reference": "none"}}
        assert v["metrics"]["kl"] > 0 and v["metrics"]["size_ratio"] < 0.6  # int8 weights against fp32 ones
    else:
        assert v["reference"]["options"]["quantize"] == "int8" and v["reference"]["differs_in"] == {}
        assert v["metrics"]["kl"] == pytest.approx(0, abs=1e-9) and v["metrics"]["size_ratio"] == pytest.approx(1, abs=0.01)
