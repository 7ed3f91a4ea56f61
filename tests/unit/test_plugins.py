"""Plugin host: hooks, registry attribution, failures, duplicates, env controls, entry-point discovery."""

from __future__ import annotations

import sys
import textwrap

import pytest
from typer.testing import CliRunner

from compressor import Exporter, Method, hookimpl
from compressor.cli import app
from compressor.errors import DuplicateNameError, UnknownPluginError
from compressor.plugin_manager import collect, load_entry_point_plugins, load_registry, make_plugin_manager


class ToyMethod(Method):
    name = "toy"
    summary = "does nothing"

    def apply(self, model, options, ctx):
        return {"touched": 0}


class ToyExporter(Exporter):
    name = "toyfmt"

    def export(self, model, dest, options):
        return {}

    def open_runtime(self, artifact, options, settings):
        raise NotImplementedError


class ToyPlugin:
    @hookimpl
    def register_methods(self, register):
        register(ToyMethod)

    @hookimpl
    def register_exporters(self, register):
        register(ToyExporter)


def test_inline_plugin_registers_and_is_attributed():
    pm = make_plugin_manager()
    pm.register(ToyPlugin(), name="toy-plugin")
    registry = collect(pm)
    assert registry.method("toy") is ToyMethod
    assert registry.exporter("toyfmt") is ToyExporter
    assert registry.owners["method:toy"] == "toy-plugin"
    info = next(p for p in registry.plugins if p.name == "toy-plugin")
    assert info.methods == ["toy"] and info.exporters == ["toyfmt"]


def test_hook_may_accept_no_arguments():
    class Quiet:
        @hookimpl
        def register_methods(self):
            pass

    pm = make_plugin_manager()
    pm.register(Quiet(), name="quiet")
    assert collect(pm).methods == {}


def test_duplicate_names_are_a_clear_error():
    pm = make_plugin_manager()
    pm.register(ToyPlugin(), name="first")
    pm.register(ToyPlugin(), name="second")
    with pytest.raises(DuplicateNameError, match="registered twice.*first.*second"):
        collect(pm)


def test_unknown_method_lists_valid_ones():
    pm = make_plugin_manager()
    pm.register(ToyPlugin(), name="toy-plugin")
    with pytest.raises(UnknownPluginError, match="installed methods: toy"):
        collect(pm).method("nope")


def test_plugin_that_raises_is_reported_and_others_still_count():
    class Broken:
        @hookimpl
        def register_methods(self, register):
            raise RuntimeError("boom")

    pm = make_plugin_manager()
    pm.register(Broken(), name="broken")
    pm.register(ToyPlugin(), name="toy-plugin")
    registry = collect(pm)
    assert "toy" in registry.methods
    assert "boom" in next(p for p in registry.plugins if p.name == "broken").error


@pytest.fixture
def fake_dists(tmp_path, monkeypatch):
    """Two out-of-tree plugin distributions on sys.path: one good, one that fails to import."""
    (tmp_path / "compressor_toy.py").write_text(textwrap.dedent('''
        from compressor import Method, hookimpl

        class Toy(Method):
            name = "toy_oot"
            summary = "out-of-tree toy"

            def apply(self, model, options, ctx):
                return {}

        @hookimpl
        def register_methods(register):
            register(Toy)
    '''))
    (tmp_path / "compressor_broken.py").write_text("raise ImportError('missing dependency xyz')\n")
    for dist, mod, ep in (("compressor_toy-0.1", "compressor_toy", "toy_oot"),
                          ("compressor_broken-0.2", "compressor_broken", "broken")):
        info = tmp_path / f"{dist}.dist-info"
        info.mkdir()
        name, version = dist.split("-")
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[compressor]\n{ep} = {mod}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for mod in ("compressor_toy", "compressor_broken"):
        sys.modules.pop(mod, None)


def test_out_of_tree_plugin_is_discovered_through_its_entry_point(fake_dists):
    registry = load_registry()
    assert "toy_oot" in registry.methods
    toy = next(p for p in registry.plugins if p.name == "toy_oot")
    assert (toy.dist, toy.version, toy.methods) == ("compressor-toy", "0.1", ["toy_oot"])
    broken = next(p for p in registry.plugins if p.name == "broken")
    assert "missing dependency xyz" in broken.error


def test_plugins_command_json_lists_distributions_and_failures(fake_dists):
    result = CliRunner().invoke(app, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    import json

    data = json.loads(result.stdout)
    names = {p["name"]: p for p in data["plugins"]}
    assert names["toy_oot"]["dist"] == "compressor-toy" and names["toy_oot"]["version"] == "0.1"
    assert names["broken"]["error"]
    assert data["methods"]["toy_oot"]["plugin"] == "toy_oot"


def test_env_blocks_and_allow_lists(fake_dists, monkeypatch):
    monkeypatch.setenv("COMPRESSOR_DISABLE_PLUGINS", "toy_oot")
    pm = make_plugin_manager()
    infos = load_entry_point_plugins(pm)
    assert next(p for p in infos if p.name == "toy_oot").blocked
    assert "toy_oot" not in collect(pm, infos).methods
    monkeypatch.delenv("COMPRESSOR_DISABLE_PLUGINS")
    monkeypatch.setenv("COMPRESSOR_LOAD_PLUGINS", "toy_oot")
    registry = load_registry()
    assert set(registry.methods) == {"toy_oot"}
    assert all(p.blocked for p in registry.plugins if p.name != "toy_oot")


def test_builtins_come_through_entry_points():
    """The host has no list of built-ins: every built-in plugin is an entry point of an installed dist."""
    registry = load_registry()
    dists = {p.dist for p in registry.plugins}
    assert {"compressor-methods", "compressor-exporters"} <= dists
