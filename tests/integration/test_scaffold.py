"""`compress new-plugin` writes packages that install (editable, offline), pass the kit, build, and uninstall.

The package goes into a venv layered over the project's own (a .pth adds the project's site-packages),
so a test that dies half-way cannot leave a stray plugin in the environment the other tests use.
"""

from __future__ import annotations

import json
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from typer.testing import CliRunner

from compressor.cli import app
from compressor.errors import ExitCode

pytestmark = [pytest.mark.slow, pytest.mark.serial]  # installs into the venv that other tests import from
FAST = ["--calib-samples", "2", "--calib-seq-len", "16", "--eval-samples", "2", "--eval-seq-len", "32",
        "--set", "verify.latency.rounds=3", "--set", "verify.latency.prompt_tokens=8",
        "--set", "verify.latency.new_tokens=4", "--set", "verify.generate_tokens=4"]


def _layered_venv(root: Path) -> Path:
    """A venv whose python also sees the project's site-packages (torch, compressor, the built-ins)."""
    venv.EnvBuilder(with_pip=False).create(root)
    py = root / "bin" / "python"
    purelib = subprocess.check_output([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                      text=True).strip()
    lines = [f"import site; site.addsitedir({d!r})" for d in site.getsitepackages()]
    Path(purelib, "parent.pth").write_text("\n".join(lines) + "\n")
    return py


def _run(py: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(py), *args], capture_output=True, text=True, cwd=cwd, timeout=900)


@pytest.mark.parametrize("kind", ["method", "exporter", "evaluator"])
def test_new_plugin_installs_passes_the_kit_builds_and_uninstalls(kind, tiny_model_dir, tmp_path):
    name = f"scaffolded_{kind}"
    made = CliRunner().invoke(app, ["new-plugin", name, "--kind", kind, "--dir", str(tmp_path)])
    assert made.exit_code == 0, made.output
    package = tmp_path / f"compressor-scaffolded-{kind}"
    assert sorted(p.name for p in package.iterdir()) == sorted(
        ["README.md", "pyproject.toml", f"compressor_{name}.py", "tests"])
    assert 'COMPRESSOR_API = ">=1.1,<2"' in (package / f"compressor_{name}.py").read_text()

    py = _layered_venv(tmp_path / "venv")
    installed = _run(py, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                     "-e", str(package), cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr
    try:
        listed = json.loads(_run(py, "-m", "compressor", "plugins", "--json", cwd=tmp_path).stdout)
        entry = next(p for p in listed["plugins"] if p["name"] == name)
        assert entry["error"] is None and entry["api"] == ">=1.1,<2"

        kit = _run(py, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(package / "tests"), cwd=package)
        assert kit.returncode == 0, kit.stdout[-3000:]
        summary = kit.stdout.strip().splitlines()[-1]
        assert " passed" in summary and "failed" not in summary and "skipped" not in summary, summary

        stage = {"method": ["--method", name, "-O", "sparsity=0.5", "--export", "transformers"],
                 "exporter": ["--method", "magnitude", "--export", name],
                 "evaluator": ["--method", "magnitude", "--export", "transformers", "--evaluator", name,
                               "--set", f"verify.budgets.max_drop.{name}.acc=1.0"]}[kind]
        out = tmp_path / "out"
        built = _run(py, "-m", "compressor", "build", "--model", str(tiny_model_dir), "--out", str(out), *FAST,
                     *stage, "--json", cwd=tmp_path)
        assert built.returncode == ExitCode.OK, built.stderr[-3000:]
        report = json.loads((out / "report.json").read_text())
        manifest = json.loads((out / "manifest.json").read_text())
        assert any(p["name"] == name and p["used"] for p in manifest["plugins"])
        if kind == "method":
            assert report["stages"][0]["method"] == name
            assert report["stages"][0]["details"]["sparsity"] >= 0.49
        elif kind == "exporter":
            assert (out / name / "config.json").exists() and "perplexity" in report["verify"][name]["metrics"]
        else:
            task = report["verify"]["transformers"]["metrics"]["tasks"][f"{name}.acc"]
            assert 0 <= task["original"] <= 1 and task["items"] == 6 and task["paired"]
            budget = next(b for b in report["verify"]["transformers"]["budgets"] if b["name"] == f"max_drop.{name}.acc")
            assert budget["status"] == "pass"  # a drop of at most 1.0 in an accuracy always passes
    finally:
        removed = _run(py, "-m", "pip", "uninstall", "-y", "-q", f"compressor-scaffolded-{kind}", cwd=tmp_path)
    assert removed.returncode == 0, removed.stderr
    after = json.loads(_run(py, "-m", "compressor", "plugins", "--json", cwd=tmp_path).stdout)
    assert name not in {p["name"] for p in after["plugins"]}


def test_new_plugin_refuses_a_bad_name_and_an_existing_directory(tmp_path):
    bad = CliRunner().invoke(app, ["new-plugin", "Bad-Name", "--kind", "method", "--dir", str(tmp_path)])
    assert bad.exit_code == ExitCode.USAGE and "lower-case" in bad.output
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "compressor-taken").mkdir()
    taken = CliRunner().invoke(app, ["new-plugin", "taken", "--kind", "exporter", "--dir", str(tmp_path)])
    assert taken.exit_code == ExitCode.USAGE and "already exists" in taken.output
    assert [p.name for p in tmp_path.iterdir()] == ["compressor-taken"]
    kind = CliRunner().invoke(app, ["new-plugin", "fine", "--kind", "linter", "--dir", str(tmp_path)])
    assert kind.exit_code == ExitCode.USAGE
