"""`compress build --replay manifest.json`: the same files again on CPU, and exit 8 when anything differs."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from compressor.cli import app
from compressor.errors import ExitCode
from compressor.testing import tiny_family, tiny_tokenizer

runner = CliRunner()
EXPORTS = ["-e", "vllm", "-e", "gguf", "-e", "onnx", "-e", "transformers"]


def test_replay_rebuilds_every_export_bit_for_bit_and_names_what_differs(tmp_path):
    model = tmp_path / "model"
    tiny_family("llama3", layers=2, tokenizer=tiny_tokenizer()).save_hf(model)
    first = tmp_path / "first"
    built = runner.invoke(app, ["build", "-m", str(model), "--method", "wanda", "--sparsity", "0.5", *EXPORTS,
                                "--calib-samples", "2", "--calib-seq-len", "16", "--no-verify", "-o", str(first)])
    assert built.exit_code == 0, built.output
    manifest = json.loads((first / "manifest.json").read_text())
    assert manifest["determinism"]["files"] is True
    exported = sorted(k for k in manifest["files"] if "/" in k and not k.startswith("plots/"))
    assert {k.split("/")[0] for k in exported} == {"vllm", "gguf", "onnx", "transformers"}

    # other versions: refused before any work
    other = {**manifest, "versions": {**manifest["versions"], "torch": "0.0.1"}}
    (tmp_path / "other.json").write_text(json.dumps(other))
    refused = runner.invoke(app, ["build", "--replay", str(tmp_path / "other.json"), "-o", str(tmp_path / "no")])
    assert refused.exit_code == ExitCode.REPLAY_MISMATCH, refused.output
    assert "torch: 0.0.1 in the manifest" in refused.output and not (tmp_path / "no").exists()
    # recipe flags cannot be mixed in
    mixed = runner.invoke(app, ["build", "--replay", str(first / "manifest.json"), "--seed", "3",
                                "-o", str(tmp_path / "no")])
    assert mixed.exit_code == ExitCode.USAGE and "--seed" in mixed.output

    # one recorded hash altered: the replay finds exactly that file, every other file is the same bytes
    altered = exported[0]
    manifest["files"][altered]["sha256"] = "0" * 64
    (first / "manifest.json").write_text(json.dumps(manifest))
    again = runner.invoke(app, ["build", "--replay", str(first / "manifest.json"), "-o", str(tmp_path / "again"),
                                "--json"])
    assert again.exit_code == ExitCode.REPLAY_MISMATCH, again.output
    found = json.loads(again.stdout)["replay"]
    assert found["differ"] == [altered] and not found["missing"] and not found["extra"] and not found["inputs"]
    report = ("report.json", "report.md", "report.html")  # timings: the report and its plots are not compared
    assert sorted(found["identical"]) == sorted(k for k in manifest["files"]
                                               if k not in (altered, *report) and not k.startswith("plots/"))
    assert f"files differ: {altered}" in again.output
