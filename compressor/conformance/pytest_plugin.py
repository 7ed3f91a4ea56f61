"""compressor's conformance kit as a pytest plugin (entry point ``pytest11``).

``pytest --compressor-plugin NAME`` runs the kit against the methods and exporters an installed
plugin entry point registers; a test module can instead import the kit's tests and name its plugins
in ``COMPRESSOR_PLUGIN``. Without either, the plugin does nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

OPTION = "--compressor-plugin"


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--compressor-plugin NAME`` (repeatable)."""
    parser.getgroup("compressor").addoption(
        OPTION, action="append", default=[], metavar="NAME", dest="compressor_plugin",
        help="run compressor's plugin conformance kit against the installed plugin entry point NAME")


def pytest_configure(config: pytest.Config) -> None:
    """With --compressor-plugin, collect the kit's tests too."""
    if config.getoption("compressor_plugin"):
        from compressor.conformance import kit

        config.args.append(kit.__file__)


@dataclass(frozen=True)
class MethodCase:
    """A method class, one option set and one model family to check it on."""

    plugin: str
    cls: Any
    options: str  # JSON, so that cases hash and print
    family: str

    @property
    def id(self) -> str:
        return f"{self.cls.name}-{self.family}" + ("" if self.options == "{}" else f"-{self.options}")


@dataclass(frozen=True)
class ExporterCase:
    """An exporter class to check."""

    plugin: str
    cls: Any

    @property
    def id(self) -> str:
        return self.cls.name


@dataclass(frozen=True)
class EvaluatorCase:
    """An evaluator class and one option set to check it with."""

    plugin: str
    cls: Any
    options: str  # JSON

    @property
    def id(self) -> str:
        return self.cls.name + ("" if self.options == "{}" else f"-{self.options}")


def _plugins(metafunc: pytest.Metafunc) -> list[str]:
    named = metafunc.config.getoption("compressor_plugin") or getattr(metafunc.module, "COMPRESSOR_PLUGIN", [])
    return [named] if isinstance(named, str) else list(named)


def cases(plugins: list[str], what: str) -> list[Any]:
    """The kit's cases for the methods or exporters that ``plugins`` register."""
    from compressor.conformance.method_checks import FAMILIES
    from compressor.plugin_manager import load_registry

    registry = load_registry()
    known = {p.name: p for p in registry.plugins}
    for name in plugins:
        if name not in known:
            raise pytest.UsageError(f"{OPTION} {name}: no such plugin entry point is installed "
                                    f"(installed: {', '.join(sorted(known))})")
        if known[name].error:
            raise pytest.UsageError(f"{OPTION} {name}: the plugin failed to load: {known[name].error}")
    found: list[Any] = []
    for name in plugins:
        if what == "methods":
            for method in known[name].methods:
                cls = registry.methods[method]
                for options in cls().conformance_options():
                    found += [MethodCase(name, cls, json.dumps(options, sort_keys=True), f) for f in FAMILIES]
        elif what == "evaluators":
            for evaluator in known[name].evaluators:
                cls = registry.evaluators[evaluator]
                found += [EvaluatorCase(name, cls, json.dumps(o, sort_keys=True)) for o in cls().conformance_options()]
        else:
            found += [ExporterCase(name, registry.exporters[e]) for e in known[name].exporters]
    return found


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize the kit's tests over the named plugins' methods and exporters."""
    for fixture, what in (("method_case", "methods"), ("exporter_case", "exporters"),
                          ("evaluator_case", "evaluators")):
        if fixture in metafunc.fixturenames:
            found = cases(_plugins(metafunc), what) or [None]  # None: deselected below, not skipped
            metafunc.parametrize(fixture, found, ids=[c.id if c else "none" for c in found], scope="module")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the kit's tests for a kind the named plugins do not register (a method-only package has no
    exporter to check): they do not apply, so they are neither run nor reported as skipped."""
    kit_fixtures = {"method_case", "exporter_case", "evaluator_case"}
    keep, drop = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        (drop if any(f in params and params[f] is None for f in kit_fixtures) else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
