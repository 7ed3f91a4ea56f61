"""Plugin discovery: entry points in the ``compressor`` group, one failure never stops the rest."""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from compressor import hookspecs
from compressor.api import API_VERSION, Evaluator, Exporter, Method
from compressor.errors import DuplicateNameError, PluginError, UnknownPluginError

ENTRY_POINT_GROUP = "compressor"
# Comma-separated entry-point names never to load (like PYTEST_DISABLE_PLUGIN_AUTOLOAD, but selective).
ENV_BLOCK = "COMPRESSOR_DISABLE_PLUGINS"
# Comma-separated allow-list: when set, only these entry points load. Empty string loads none.
ENV_ALLOW = "COMPRESSOR_LOAD_PLUGINS"


@dataclass
class PluginInfo:
    """One loaded or failed plugin, attributed to its distribution."""

    name: str
    dist: str
    version: str
    module: str
    methods: list[str] = field(default_factory=list)
    exporters: list[str] = field(default_factory=list)
    evaluators: list[str] = field(default_factory=list)
    error: str | None = None
    blocked: bool = False
    api: str | None = None  # the COMPRESSOR_API range the plugin declares (None: it declares none)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable view."""
        return dict(self.__dict__)


@dataclass
class Registry:
    """Everything the loaded plugins registered, with who registered it."""

    methods: dict[str, type[Method]] = field(default_factory=dict)
    exporters: dict[str, type[Exporter]] = field(default_factory=dict)
    evaluators: dict[str, type[Evaluator]] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)
    plugins: list[PluginInfo] = field(default_factory=list)

    def method(self, name: str) -> type[Method]:
        """Return the method class called ``name`` or raise listing the valid ones."""
        if name not in self.methods:
            raise UnknownPluginError(f"unknown method {name!r}; installed methods: {_names(self.methods)}",
                                     hint=self._failure_hint() or "run `compress plugins` to see what is installed")
        return self.methods[name]

    def exporter(self, name: str) -> type[Exporter]:
        """Return the exporter class called ``name`` or raise listing the valid ones."""
        if name not in self.exporters:
            raise UnknownPluginError(f"unknown export format {name!r}; installed formats: {_names(self.exporters)}",
                                     hint=self._failure_hint() or "run `compress plugins` to see what is installed")
        return self.exporters[name]

    def evaluator(self, name: str) -> type[Evaluator]:
        """Return the evaluator class called ``name`` or raise listing the valid ones."""
        if name not in self.evaluators:
            raise UnknownPluginError(f"unknown evaluator {name!r}; installed evaluators: {_names(self.evaluators)}",
                                     hint=self._failure_hint() or "run `compress plugins` to see what is installed")
        return self.evaluators[name]

    def origin(self, what: str, name: str) -> str:
        """Who registered a method or exporter: "entry point X of distribution D V"."""
        plugin = self.owners.get(f"{what}:{name}")
        info = next((p for p in self.plugins if p.name == plugin), None)
        if info is None:
            return f"plugin {plugin!r}" if plugin else "an unknown plugin"
        return f"entry point {info.name!r} of distribution {info.dist} {info.version}".rstrip()

    def failures(self) -> list[PluginInfo]:
        """Return the plugins that failed to load."""
        return [p for p in self.plugins if p.error]

    def _failure_hint(self) -> str | None:
        failed = self.failures()
        if not failed:
            return None
        return "these plugins failed to load: " + ", ".join(f"{p.name} ({p.error})" for p in failed)


def _names(d: dict[str, Any]) -> str:
    return ", ".join(sorted(d)) or "(none)"


def _env_list(name: str) -> set[str] | None:
    raw = os.environ.get(name)
    if raw is None:
        return None
    return {x.strip() for x in raw.split(",") if x.strip()}


def make_plugin_manager() -> pluggy.PluginManager:
    """Return an empty plugin manager that knows compressor's hookspecs."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def load_entry_point_plugins(pm: pluggy.PluginManager) -> list[PluginInfo]:
    """Import and register every entry point of the group, recording failures instead of raising."""
    blocked = _env_list(ENV_BLOCK) or set()
    allowed = _env_list(ENV_ALLOW)
    infos: list[PluginInfo] = []
    seen: set[tuple[str, str]] = set()
    for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        dist = ep.dist.name if ep.dist else "?"
        if (dist, ep.name) in seen:  # the same dist can be visible twice on sys.path
            continue
        seen.add((dist, ep.name))
        info = PluginInfo(ep.name, dist, ep.dist.version if ep.dist else "?", ep.value)
        infos.append(info)
        if ep.name in blocked or (allowed is not None and ep.name not in allowed):
            info.blocked = True
            pm.set_blocked(ep.name)
            continue
        try:
            plugin = ep.load()
            info.api = getattr(plugin, "COMPRESSOR_API", None)
            info.error = api_incompatibility(info.api)
            if info.error is None:
                pm.register(plugin, name=ep.name)
        except Exception as exc:  # a broken plugin must not take the others down
            info.error = f"{type(exc).__name__}: {exc}"
            if os.environ.get("COMPRESSOR_DEBUG"):
                traceback.print_exc()
    return infos


def api_incompatibility(declared: Any) -> str | None:
    """Why a plugin declaring ``COMPRESSOR_API = declared`` cannot load here; None when it can (or declares none)."""
    if declared is None:
        return None
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    try:
        supported = SpecifierSet(str(declared))
    except InvalidSpecifier:
        return f"its COMPRESSOR_API {declared!r} is not a version range (write e.g. \">=1.0,<2\")"
    if not supported.contains(API_VERSION, prereleases=True):
        return (f"incompatible: it supports compressor API {declared}, this compressor has API {API_VERSION}; "
                "install a version of the plugin made for this API")
    return None


def collect(pm: pluggy.PluginManager, infos: list[PluginInfo] | None = None) -> Registry:
    """Call the register hooks plugin by plugin and build the registry, attributing each name."""
    registry = Registry(plugins=list(infos or []))
    by_name = {p.name: p for p in registry.plugins}
    for plugin_name, plugin in pm.list_name_plugin():
        if plugin is not None and plugin_name not in by_name:  # registered directly (tests, inline)
            info = PluginInfo(plugin_name, "(inline)", "", getattr(plugin, "__name__", type(plugin).__name__))
            registry.plugins.append(info)
            by_name[plugin_name] = info
    tables = {"register_methods": (registry.methods, "method", "methods"),
              "register_exporters": (registry.exporters, "exporter", "exporters"),
              "register_evaluators": (registry.evaluators, "evaluator", "evaluators")}
    for hook_name, (table, what, attr) in tables.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            info = by_name[impl.plugin_name]

            def register(cls: Any, _table: dict = table, _what: str = what, _info: PluginInfo = info,
                         _attr: str = attr) -> None:
                _add(_table, _what, cls, _info.name, registry.owners)
                getattr(_info, _attr).append(cls.name)

            try:
                impl.function(**{arg: register for arg in impl.argnames})
            except (DuplicateNameError, PluginError):
                raise
            except Exception as exc:  # a plugin that raises is reported, the others still count
                info.error = f"{hook_name} raised {type(exc).__name__}: {exc}"
    return registry


def _add(table: dict[str, Any], what: str, cls: Any, plugin_name: str, owners: dict[str, str]) -> None:
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise PluginError(f"plugin {plugin_name!r} registered a {what} class {cls!r} without a `name`")
    key = f"{what}:{name}"
    if name in table:
        raise DuplicateNameError(
            f"{what} {name!r} is registered twice: by plugin {owners[key]!r} and by plugin {plugin_name!r}",
            hint=f"uninstall one of them, or block one with {ENV_BLOCK}={plugin_name}")
    table[name] = cls
    owners[key] = plugin_name


def load_registry(extra_plugins: list[object] | None = None) -> Registry:
    """Discover entry-point plugins, add ``extra_plugins``, and return the registry."""
    pm = make_plugin_manager()
    infos = load_entry_point_plugins(pm)
    for i, plugin in enumerate(extra_plugins or []):
        pm.register(plugin, name=getattr(plugin, "__name__", f"inline-{i}"))
    _drop_invalid(pm, infos)
    return collect(pm, infos)


def _drop_invalid(pm: pluggy.PluginManager, infos: list[PluginInfo]) -> None:
    """Unregister plugins with misspelled hooks (``check_pending``) and record why."""
    by_name = {p.name: p for p in infos}
    while True:
        try:
            pm.check_pending()
            return
        except pluggy.PluginValidationError as exc:
            name = pm.get_name(exc.plugin) or "?"
            pm.unregister(exc.plugin)
            if name in by_name:
                by_name[name].error = f"invalid hook: {exc}"
            else:
                raise PluginError(f"plugin {name!r} is invalid: {exc}") from exc
