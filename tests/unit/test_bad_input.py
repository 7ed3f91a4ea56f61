"""The bad-input suite: hostile or unlucky input gets one message, its exit code, and loses nothing.

Every case asserts the exit code, a one-line message (with a hint where it is an error), no
traceback, nothing left in or beside ``--out`` (unless ``--out`` existed before, and then it is
unchanged), and the input tree hashed before and after. The README's reliability section lists
the cases; ``test_readme_lists_every_case`` keeps the two in step.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests_helpers import README
from typer.testing import CliRunner

from compressor.cli import app
from compressor.errors import ExitCode

runner = CliRunner()
NO_VERIFY = ["--calib-samples", "2", "--calib-seq-len", "16", "--no-verify"]


def tree_digest(*roots: Path) -> str:
    """SHA-256 over every file's relative path and bytes (and every directory's name) under ``roots``."""
    h = hashlib.sha256()
    for root in roots:
        root = Path(root)
        if root.is_file():
            h.update(root.name.encode() + root.read_bytes())
            continue
        for p in sorted(root.rglob("*")):
            h.update(p.relative_to(root).as_posix().encode())
            if p.is_file() and not p.is_symlink():
                h.update(p.read_bytes())
    return h.hexdigest()


def debris(out: Path) -> list[str]:
    """Files a build left beside ``out``: staging, moved-aside outputs, locks."""
    if not out.parent.is_dir():
        return []
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


@dataclass
class World:
    """A private copy of the tiny model and a scratch folder for one case."""

    root: Path
    model: Path

    @property
    def out(self) -> Path:
        return self.root / "out"

    def npy(self, name: str, array: np.ndarray) -> Path:
        path = self.root / name
        np.save(path, array)
        return path

    def text(self, name: str, content: str) -> Path:
        path = self.root / name
        path.write_text(content)
        return path

    def model_variant(self, name: str, drop: tuple[str, ...] = (), edit: Callable[[Path], None] | None = None) -> Path:
        path = self.root / name
        shutil.copytree(self.model, path)
        for f in drop:
            (path / f).unlink()
        if edit:
            edit(path)
        return path


@pytest.fixture
def world(tiny_model_dir, tmp_path) -> World:
    shutil.copytree(tiny_model_dir, tmp_path / "model")
    return World(tmp_path, tmp_path / "model")


def check_case(world: World, args: list[str], code: int, needle: str, out: Path | None = None,
               inputs: list[Path] | None = None) -> str:
    """Run ``compress`` in-process and assert everything a bad-input case promises; return stderr."""
    out = world.out if out is None else out
    if inputs is None:  # everything in the scratch folder but the output (which a successful case writes)
        inputs = [p for p in world.root.iterdir() if p != out and not p.name.startswith(f".{out.name}.")]
    out_before = tree_digest(out) if out.exists() else None
    before = tree_digest(*inputs)
    result = runner.invoke(app, args)
    stderr = result.stderr
    assert result.exit_code == code, f"exit {result.exit_code}, wanted {code}:\n{result.output}"
    assert needle in stderr, stderr
    assert "Traceback" not in result.output and not isinstance(result.exception, (AssertionError, TypeError))
    if code not in (ExitCode.OK, ExitCode.VERIFY_FAILED, ExitCode.VERIFY_ERROR):
        heads = ("interrupted:", "terminated:") if code in (ExitCode.INTERRUPTED, ExitCode.TERMINATED) else ("error:",)
        assert len([ln for ln in stderr.splitlines() if ln.startswith(heads)]) == 1, f"not one message:\n{stderr}"
        assert "internal error" not in stderr, stderr
        if code != ExitCode.INTERRUPTED:
            assert "hint:" in stderr, stderr
        if out_before is None:
            assert not out.exists(), f"a failed build left {out}"
        else:
            assert tree_digest(out) == out_before, f"a failed build changed the existing {out}"
        assert not debris(out), f"left beside --out: {debris(out)}"
    assert tree_digest(*inputs) == before, "an input was modified"
    return stderr


def build(world: World, *extra: str, model: Path | str | None = None, out: Path | None = None) -> list[str]:
    return ["build", "--model", str(model or world.model), "--out", str(out or world.out), *NO_VERIFY, *extra]


# ---------------------------------------------------------------------------------------------
# model files

def _config_edit(**changes):
    def edit(path: Path) -> None:
        config = json.loads((path / "config.json").read_text())
        config.update(changes)
        (path / "config.json").write_text(json.dumps(config))
    return edit


MODEL_CASES = {
    "model-missing": (lambda w: w.root / "nowhere", ExitCode.INPUT, "not found"),
    "model-corrupt-weights": (lambda w: w.model_variant("m", edit=lambda p: (p / "model.safetensors").write_bytes(
        b"\x00garbage" * 10)), ExitCode.INPUT, "could not load"),
    "model-truncated-weights": (lambda w: w.model_variant("m", edit=lambda p: (p / "model.safetensors").write_bytes(
        (p / "model.safetensors").read_bytes()[:5000])), ExitCode.INPUT, "could not load"),
    "model-pickle-only": (lambda w: w.model_variant("m", drop=("model.safetensors",), edit=lambda p: (
        p / "pytorch_model.bin").write_bytes(b"not really")), ExitCode.INPUT, "--allow-pickle"),
    "model-pickle-file": (lambda w: w.text("weights.pt", "x"), ExitCode.INPUT, "pickle"),
    "model-no-config": (lambda w: w.model_variant("m", drop=("config.json",)), ExitCode.INPUT, "no config.json"),
    "model-no-weights": (lambda w: w.model_variant("m", drop=("model.safetensors",)), ExitCode.INPUT,
                         "no weight files"),
    "model-no-tokenizer": (lambda w: w.model_variant("m", drop=("tokenizer.json",)), ExitCode.INPUT,
                           "tokenizer files missing"),
    "model-unsupported-architecture": (lambda w: w.model_variant("m", edit=_config_edit(model_type="gpt2")),
                                       ExitCode.INPUT, "supports"),
    "model-config-not-json": (lambda w: w.model_variant("m", edit=lambda p: (p / "config.json").write_text("{")),
                              ExitCode.INPUT, "config"),
    "model-truncated-gguf": (lambda w: w.text("broken.gguf", "GGUF\x03\x00"), ExitCode.INPUT, "broken.gguf"),
    "model-is-a-text-file": (lambda w: w.text("notes.txt", "hello"), ExitCode.INPUT, "neither a model directory"),
}


@pytest.mark.parametrize("case", sorted(MODEL_CASES))
def test_bad_model_files(toykit, world, case):
    make, code, needle = MODEL_CASES[case]
    check_case(world, build(world, "--export", "kit_hf", model=make(world)), code, needle)


# ---------------------------------------------------------------------------------------------
# data files

DATA_CASES = {
    "data-empty-rows": (lambda w: ["--calib", str(w.npy("c.npy", np.zeros((0, 16), np.int64)))], "empty"),
    "data-empty-columns": (lambda w: ["--calib", str(w.npy("c.npy", np.zeros((4, 0), np.int64)))], "empty"),
    "data-float-array": (lambda w: ["--calib", str(w.npy("c.npy", np.zeros((4, 16), np.float32)))], "integer"),
    "data-one-dimensional": (lambda w: ["--calib", str(w.npy("c.npy", np.zeros(16, np.int64)))], "2-D"),
    "data-ids-outside-vocabulary": (lambda w: ["--calib", str(w.npy("c.npy", np.full((4, 16), 10**6)))],
                                    "outside"),
    "data-negative-ids": (lambda w: ["--calib", str(w.npy("c.npy", np.full((4, 16), -1)))], "outside"),
    "data-not-npy": (lambda w: ["--calib", str(w.text("c.npy", "not an array"))], "could not read"),
    "data-missing-file": (lambda w: ["--calib", str(w.root / "none.txt")], "none.txt"),
    "data-too-short-text": (lambda w: ["--calib", str(w.text("c.txt", "to be")), "--calib-samples", "4"], "windows"),
}


@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_bad_data_files(toykit, world, case):
    make, needle = DATA_CASES[case]
    # Wanda reads calibration data (kit_drop_last would never open it)
    args = build(world, "--method", "wanda", "--sparsity", "0.5", "--export", "kit_hf", *make(world))
    check_case(world, args, ExitCode.INPUT, needle)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.integers(0, 3), cols=st.integers(0, 24), low=st.integers(-5, 300), span=st.integers(0, 10**6))
def test_generated_data_arrays_are_used_or_refused_as_data_errors(toykit, world, rows, cols, low, span):
    """Any int array: a valid one builds (exit 0); an empty, short or out-of-vocabulary one is exit 3."""
    vocab = json.loads((world.model / "config.json").read_text())["vocab_size"]
    array = (low + np.arange(rows * cols).reshape(rows, cols) % (span + 1)).astype(np.int64)
    path = world.npy("gen.npy", array)
    valid = bool(array.size) and array.min() >= 0 and array.max() < vocab
    shutil.rmtree(world.out, ignore_errors=True)
    args = ["build", "--model", str(world.model), "--out", str(world.out), "--no-verify", "--method", "wanda",
            "--sparsity", "0.5", "--export", "kit_hf", "--calib", str(path),
            "--set", "data.calibration.samples=null", "--set", "data.calibration.seq_len=null"]
    check_case(world, args, ExitCode.OK if valid else ExitCode.INPUT, "" if valid else "error")


# ---------------------------------------------------------------------------------------------
# recipes

RECIPE_CASES = {
    "recipe-is-a-list": ("- model: x\n", "holds a YAML list"),
    "recipe-is-a-string": ("just words\n", "holds a YAML str"),
    "recipe-invalid-yaml": ("model: [unclosed\n", "not valid YAML"),
    "recipe-unknown-key": ("modle: x\n", "unknown key"),
    "recipe-out-of-range": ("data:\n  calibration: {samples: 0}\n", "greater than or equal"),
    "recipe-wrong-type": ("seed: [1, 2]\n", "seed"),
    "recipe-export-name-escapes": ("export:\n  - {format: kit_hf, name: ../../escape}\n", "name"),
    "recipe-duplicate-export-dirs": ("export:\n  - {format: kit_hf}\n  - {format: kit_hf}\n", "same directory"),
    "recipe-binary-file": (b"\xff\xfe\x00garbage", "not UTF-8"),
}


@pytest.mark.parametrize("case", sorted(RECIPE_CASES))
def test_bad_recipes(toykit, world, case):
    content, needle = RECIPE_CASES[case]
    path = world.root / "recipe.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    check_case(world, ["build", "--recipe", str(path), "--out", str(world.out), "--no-verify"], ExitCode.USAGE,
               needle)


def test_recipe_that_is_a_directory(toykit, world):
    check_case(world, ["build", "--recipe", str(world.model), "--out", str(world.out)], ExitCode.USAGE,
               "is a directory")


RECIPE_FIELDS = {"seed": st.one_of(st.integers(), st.text(max_size=5), st.none(), st.lists(st.integers(), max_size=2)),
                 "device": st.one_of(st.sampled_from(["cpu", "cuda", "cuda:7", "CPU", "tpu", "", "cuda:-1"]),
                                     st.integers()),
                 "dtype": st.one_of(st.sampled_from(["float32", "float8", "int4", ""]), st.integers()),
                 "data.calibration.samples": st.one_of(st.integers(-3, 200_000), st.floats(allow_nan=True),
                                                       st.text(max_size=4)),
                 "data.evaluation.seq_len": st.one_of(st.integers(-3, 200_000), st.booleans()),
                 "verify.budgets.max_kl": st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=3)),
                 "verify.budgets.min_top1_agreement": st.floats(-2, 3),
                 "verify.latency.rounds": st.one_of(st.integers(-5, 10**9), st.text(max_size=3)),
                 "export.0.format": st.one_of(st.sampled_from(["kit_hf", "nope", "../x", ""]), st.integers())}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.fixed_dictionaries({}, optional=RECIPE_FIELDS))
def test_generated_recipe_values_are_validated_never_crash(toykit, world, values):
    """Any recipe values: a dry run either plans (0), or refuses with a usage/plugin error; never a crash."""
    import yaml

    from compressor.recipe import set_path

    raw: dict = {"model": str(world.model), "export": [{"format": "kit_hf"}]}
    for key, value in values.items():
        set_path(raw, key, value)
    path = world.root / "gen.yaml"
    path.write_text(yaml.safe_dump(raw))
    before = tree_digest(world.model)
    result = runner.invoke(app, ["build", "--recipe", str(path), "--out", str(world.out), "--dry-run"])
    assert result.exit_code in (ExitCode.OK, ExitCode.USAGE, ExitCode.PLUGIN), result.output
    assert "Traceback" not in result.output and "internal error" not in result.stderr, result.output
    if result.exit_code:
        assert "hint:" in result.stderr, result.stderr
    assert not world.out.exists() and not debris(world.out)
    assert tree_digest(world.model) == before


# ---------------------------------------------------------------------------------------------
# flags

FLAG_CASES = {
    "flag-device-banana": (["--device", "banana"], ExitCode.USAGE, "cpu, cuda or cuda:N"),
    "flag-verify-device-banana": (["--verify-device", "banana"], ExitCode.USAGE, "cpu, cuda or cuda:N"),
    "flag-device-cuda-absent": (["--device", "cuda:0"], ExitCode.USAGE, "CUDA device"),
    "flag-quantize-option-without-quantize": (["-Q", "bits=4"], ExitCode.USAGE, "without --quantize"),
    "flag-unknown-method-option": (["--method", "kit_drop_last", "-O", "colour=red"], ExitCode.USAGE, "colour"),
    "flag-unknown-export-option": (["-E", "colour=red"], ExitCode.USAGE, "colour"),
    "flag-unknown-method": (["--method", "nope"], ExitCode.PLUGIN, "unknown method 'nope'"),
    "flag-unknown-format": (["--export", "nope"], ExitCode.PLUGIN, "unknown export format 'nope'"),
    "flag-sparsity-out-of-range": (["--method", "magnitude", "--sparsity", "1.5"], ExitCode.USAGE, "sparsity"),
    "flag-bad-set-path": (["--set", "prune.x=1"], ExitCode.USAGE, "prune: Input should be a valid list"),
    "flag-n-m-on-indivisible-width": (["--method", "magnitude", "--pattern", "2:5"], ExitCode.USAGE,
                                      "layers.0.self_attn.q_proj has 64 input columns, not a multiple of 5"),
}


@pytest.mark.parametrize("case", sorted(FLAG_CASES))
def test_bad_flags(toykit, world, case):
    flags, code, needle = FLAG_CASES[case]
    export = [] if "--export" in flags else ["--export", "kit_hf"]
    check_case(world, build(world, *export, *flags), code, needle)


# ---------------------------------------------------------------------------------------------
# output paths: the data-loss cases first

def test_out_is_the_model_even_with_force(toykit, world):
    stderr = check_case(world, build(world, "--export", "kit_hf", "--force", out=world.model), ExitCode.USAGE,
                        "is the input", out=world.model)
    assert "--force never changes this" in stderr
    assert (world.model / "config.json").is_file() and (world.model / "model.safetensors").is_file()


def test_out_containing_the_model_with_force(toykit, world):
    check_case(world, build(world, "--export", "kit_hf", "--force", out=world.root), ExitCode.USAGE,
               "contains the input", out=world.root)


def test_out_inside_the_model(toykit, world):
    check_case(world, build(world, "--export", "kit_hf", out=world.model / "compressed"), ExitCode.USAGE,
               "lies inside the input", out=world.model / "compressed")


def test_out_through_a_symlink_to_the_model(toykit, world):
    link = world.root / "link"
    link.symlink_to(world.model, target_is_directory=True)
    check_case(world, build(world, "--export", "kit_hf", "--force", out=link), ExitCode.USAGE, "is the input",
               out=link)


def test_out_through_dotdot_to_the_model(toykit, world):
    sneaky = world.root / "elsewhere" / ".." / "model"
    (world.root / "elsewhere").mkdir()
    check_case(world, build(world, "--export", "kit_hf", "--force", out=sneaky), ExitCode.USAGE, "is the input",
               out=world.model)


def test_out_containing_the_calibration_data(toykit, world):
    data = world.root / "data" / "calib.npy"
    data.parent.mkdir()
    np.save(data, np.ones((2, 16), np.int64))
    check_case(world, build(world, "--method", "wanda", "--export", "kit_hf", "--calib", str(data), "--force",
                            out=data.parent), ExitCode.USAGE, "contains the input", out=data.parent)


def test_out_containing_the_recipe_file(toykit, world):
    folder = world.root / "prev"
    folder.mkdir()
    recipe = folder / "recipe.yaml"
    recipe.write_text(f"model: {world.model}\nexport: [{{format: kit_hf}}]\n")
    check_case(world, ["build", "--recipe", str(recipe), "--out", str(folder), "--force", "--no-verify"],
               ExitCode.USAGE, "contains the input", out=folder)


def test_factors_dir_inside_the_model(world):
    check_case(world, build(world, "--method", "surgeon", "-O", "factors_on=disk", "-O",
                            f"factors_dir={world.model / 'factors'}", "--export", "onnx"),
               ExitCode.USAGE, "surgeon's directory")


def test_out_is_a_file(toykit, world):
    target = world.text("a-file", "precious")
    check_case(world, build(world, "--export", "kit_hf", "--force", out=target), ExitCode.USAGE,
               "not a directory", out=target)


def test_out_not_empty_without_force(toykit, world):
    world.out.mkdir()
    (world.out / "keep.txt").write_text("precious")
    check_case(world, build(world, "--export", "kit_hf"), ExitCode.USAGE, "not empty")


def test_out_in_a_read_only_location(toykit, world):
    # /sys refuses new entries even to root, unlike a chmod-ed folder
    out = Path("/sys/compressor-bad-input-out")
    stderr = check_case(world, build(world, "--export", "kit_hf", out=out), ExitCode.USAGE, "--out", out=out)
    assert "cannot write to --out /sys/compressor-bad-input-out" in stderr and ".partial" not in stderr


def test_verify_report_over_the_model(toykit, world, tiny_model_dir):
    artifact = world.root / "art"
    assert runner.invoke(app, build(world, "--export", "kit_hf", out=artifact)).exit_code == 0
    target = world.model / "config.json"
    check_case(world, ["verify", str(artifact / "kit_hf"), "--original", str(world.model), "--report", str(target)],
               ExitCode.USAGE, "lies inside the input", out=world.root / "no-out")


# ---------------------------------------------------------------------------------------------
# plugins and resources

PLUGIN_CASES = {
    "plugin-method-raises": (["--method", "kit_explode", "--export", "kit_hf"], ExitCode.PLUGIN,
                             "entry point 'toykit' of distribution compressor-toykit 0.1"),
    "plugin-method-interrupted": (["--method", "kit_interrupt", "--export", "kit_hf"], ExitCode.INTERRUPTED,
                                  "interrupted"),
    "plugin-cuda-out-of-memory": (["--method", "kit_cuda_oom", "--export", "kit_hf"], ExitCode.RESOURCE,
                                  "CUDA memory ran out"),
    "disk-full-errno": (["--export", "kit_diskfull"], ExitCode.RESOURCE, "disk filled up"),
    "disk-full-safetensors-message": (["--export", "kit_diskfull", "-E", "how=safetensors"], ExitCode.RESOURCE,
                                      "disk filled up"),
    "disk-full-wrapped-by-plugin": (["--export", "kit_diskfull", "-E", "how=wrapped"], ExitCode.RESOURCE,
                                    "disk filled up"),
}


@pytest.mark.parametrize("case", sorted(PLUGIN_CASES))
def test_plugins_and_resources(toykit, world, case):
    flags, code, needle = PLUGIN_CASES[case]
    check_case(world, build(world, *flags), code, needle)


def test_verify_an_artifact_of_another_model(toykit, world):
    from compressor.testing import save_tiny_model

    # the artifact: the tiny model with 40 extra embedding rows, as a model with a larger vocabulary
    other = world.model_variant("bigger-vocab")
    from compressor.model_loading import load_model

    handle = load_model(str(other))
    handle.model.resize_token_embeddings(handle.model.config.vocab_size + 40)
    shutil.rmtree(other)
    handle.save_hf(other)
    artifact = world.root / "art"
    assert runner.invoke(app, build(world, "--export", "kit_hf", model=other, out=artifact)).exit_code == 0
    check_case(world, ["verify", str(artifact / "kit_hf"), "--original", str(world.model), "--eval-samples", "2",
                       "--eval-seq-len", "16"], ExitCode.INPUT, "built from another model", out=world.root / "none")


def test_inspect_out_inside_the_model(world):
    check_case(world, ["inspect", str(world.model), "--out", str(world.model / "inspect")], ExitCode.USAGE,
               "lies inside the input", out=world.model / "inspect")


def test_hub_id_never_falls_back_to_pickle(toykit, world, tmp_path):
    """A hub repository (here a local offline cache) holding only pytorch_model.bin is refused without --allow-pickle."""
    import torch
    from transformers import AutoModelForCausalLM

    cache = tmp_path / "hub"
    snapshot = cache / "models--someone--tiny" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    torch.save(AutoModelForCausalLM.from_pretrained(world.model).state_dict(), snapshot / "pytorch_model.bin")
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(world.model / name, snapshot / name)
    (cache / "models--someone--tiny" / "refs").mkdir()
    (cache / "models--someone--tiny" / "refs" / "main").write_text("0" * 40)
    assert (snapshot / "pytorch_model.bin").is_file() and not list(snapshot.glob("*.safetensors"))
    before = tree_digest(cache)
    # huggingface_hub reads its cache location at import: run the real script with it set
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(toykit), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([str(Path(sys.executable).parent / "compress"), *build(world, "--export", "kit_hf",
                                                                                model="someone/tiny")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == ExitCode.INPUT, proc.stderr
    assert "could not load model someone/tiny" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert "safetensors" in proc.stderr, proc.stderr
    assert not world.out.exists() and not debris(world.out) and tree_digest(cache) == before


def test_bracketed_path_is_printed_literally(toykit, world):
    model = world.root / "models[v2]"
    stderr = check_case(world, build(world, "--export", "kit_hf", model=model), ExitCode.INPUT, "models[v2]")
    assert f"model {str(model)!r} not found" in stderr


def test_missing_runtime_hint_prints_the_extra_literally(world, monkeypatch):
    import compressor_exporters.vllm.exporter as vllm_exporter

    monkeypatch.setattr(vllm_exporter, "vllm_version", lambda: None)  # as on a machine without vLLM
    stderr = check_case(world, ["build", "--model", str(world.model), "--out", str(world.out), "--export", "vllm"],
                        ExitCode.PLUGIN, "not installed")
    assert "pip install 'compressor-exporters[vllm]'" in stderr and "Traceback" not in stderr


def test_plugin_options_print_n_m_literally():
    result = runner.invoke(app, ["plugins", "--options"])
    assert result.exit_code == 0 and "n:m: weights whose correlations" in result.stdout


def test_readme_lists_every_case():
    """The README's reliability table names each case of this suite and of the kill suite, and states the count."""
    from test_kills import KILL_CASES

    section = README.read_text().split("## Reliability", 1)[1].split("\n## ", 1)[0]
    names = sorted(set(MODEL_CASES) | set(DATA_CASES) | set(RECIPE_CASES) | set(FLAG_CASES) | set(PLUGIN_CASES)
                   | set(SINGLE_CASES) | set(KILL_CASES))
    missing = [n for n in names if f"`{n}`" not in section]
    assert not missing, f"README reliability section lacks {missing}"
    assert f"**{len(names)} cases**" in section


# the cases above that are one test each (the tables hold the others)
SINGLE_CASES = ["data-generated-arrays", "recipe-generated-values", "recipe-is-a-directory", "out-is-the-model-force",
                "out-contains-the-model-force", "out-inside-the-model", "out-symlink-to-the-model",
                "out-dotdot-to-the-model", "out-contains-the-calibration-data", "out-contains-the-recipe",
                "factors-dir-inside-the-model", "out-is-a-file", "out-not-empty", "out-read-only",
                "verify-report-over-the-model", "verify-artifact-of-another-model", "message-bracketed-path",
                "message-missing-runtime-hint", "message-plugin-options-n-m", "inspect-out-inside-the-model",
                "model-hub-id-pickle-only"]
