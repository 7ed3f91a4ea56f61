"""The plugin API: one import surface (compressor.api), a semantic version, and plugins that declare theirs."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import compressor.api as api
from compressor.cli import app
from compressor.plugin_manager import api_incompatibility, load_registry

ROOT = Path(__file__).parents[2]
BUILTIN_DISTS = ("plugins", "exporters", "evaluators")


def _host_imports(path: Path) -> list[tuple[str, str, int]]:
    """(module, name, line) of every import from the host package in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "compressor":
            found += [(node.module, a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(a.name, "*", node.lineno) for a in node.names if a.name.split(".")[0] == "compressor"]
    return found


def test_builtin_plugins_use_only_compressor_api_and_hookimpl():
    outside = [f"{p.relative_to(ROOT)}:{line}: {module}.{name}"
               for dist in BUILTIN_DISTS for p in sorted((ROOT / dist).rglob("*.py"))
               for module, name, line in _host_imports(p)
               if module != "compressor.api" and (module, name) != ("compressor", "hookimpl")]
    assert outside == [], "imports from host internals:\n" + "\n".join(outside)


def test_the_boundary_check_sees_an_internal_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from compressor.calibration import run_layer_sequential\n")
    assert _host_imports(bad) == [("compressor.calibration", "run_layer_sequential", 2)]


def test_every_name_of_the_api_resolves_and_is_listed():
    for name in api.__all__:
        assert getattr(api, name) is not None, name
    assert set(api.__all__) <= set(dir(api))
    from compressor.calibration import run_layer_sequential
    from compressor.model import ModelHandle

    assert api.ModelHandle is ModelHandle and api.run_layer_sequential is run_layer_sequential
    with pytest.raises(AttributeError):
        api.no_such_name  # noqa: B018


def test_api_version_is_semantic_and_every_builtin_plugin_declares_a_range_that_holds_it():
    assert re.fullmatch(r"\d+\.\d+\.\d+", api.API_VERSION)
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert f"`compressor.api.API_VERSION` (now `{api.API_VERSION}`)" in readme, "the README names another API version"
    registry = load_registry()
    builtin = [p for p in registry.plugins if p.dist in ("compressor-methods", "compressor-exporters",
                                                          "compressor-evaluators")]
    assert len(builtin) == 12, [p.name for p in registry.plugins]
    for p in builtin:
        assert p.api and p.error is None and api_incompatibility(p.api) is None, p


@pytest.mark.parametrize("declared,problem", [(">=1.0,<2", None), (None, None), (">=2,<3", "incompatible"),
                                              ("<1.0", "incompatible"), ("one point oh", "not a version range")])
def test_a_declared_range_is_checked_against_the_host(declared, problem):
    found = api_incompatibility(declared)
    assert (found is None) if problem is None else (problem in found), found


def _fake_dist(root: Path, name: str, declared: str) -> None:
    (root / f"compressor_{name}.py").write_text(
        "from compressor import hookimpl\n"
        f"COMPRESSOR_API = {declared!r}\n\n\n"
        "@hookimpl\ndef register_methods(register):\n    pass\n")
    info = root / f"compressor_{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: compressor-{name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[compressor]\n{name} = compressor_{name}\n")


def test_an_incompatible_plugin_is_refused_by_name_and_the_others_still_load(tmp_path, monkeypatch):
    _fake_dist(tmp_path, "future_method", ">=2,<3")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        registry = load_registry()
        info = next(p for p in registry.plugins if p.name == "future_method")
        assert "incompatible" in info.error and api.API_VERSION in info.error and info.api == ">=2,<3"
        assert {"wanda", "magnitude"} <= set(registry.methods) and {"vllm", "gguf"} <= set(registry.exporters)
        shown = CliRunner().invoke(app, ["plugins"], env={"COLUMNS": "300"})
        assert shown.exit_code == 0, shown.output
        assert "future_method" in shown.output and "incompatible" in shown.output
    finally:
        sys.modules.pop("compressor_future_method", None)
