"""The build plan: every method and exporter resolved and its options validated, before any work."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from compressor.api import Benefit, Evaluator, Exporter, Kind, Method
from compressor.errors import NoBenefitError, PluginError, RecipeError
from compressor.plugin_manager import Registry
from compressor.recipe import EvaluatorSpec, ExportSpec, Recipe, StageSpec, VerifySpec

Log = Callable[[str], None]


@dataclass
class PlannedStage:
    """A recipe stage resolved to a method instance and validated options."""

    index: int
    slot: str  # "prune", "heal" or "quantize"
    spec: StageSpec
    method: Method
    options: Any
    origin: str = ""  # the entry point and distribution that registered the method, for error messages


@dataclass
class PlannedExport:
    """A recipe export resolved to an exporter instance and validated options."""

    spec: ExportSpec
    exporter: Exporter
    options: Any
    origin: str = ""


@dataclass
class PlannedEvaluator:
    """A recipe evaluator resolved to an instance and validated options."""

    spec: EvaluatorSpec
    evaluator: Evaluator
    options: Any


@dataclass
class Plan:
    """Everything a build will do, checked before any expensive step."""

    recipe: Recipe
    stages: list[PlannedStage]
    exports: list[PlannedExport]
    evaluators: list[PlannedEvaluator] = field(default_factory=list)


def _validate_options(cls: type[Any], raw: dict[str, Any], where: str) -> Any:
    try:
        return cls.Options.model_validate(raw)
    except ValidationError as exc:
        valid = ", ".join(sorted(cls.Options.model_fields)) or "(none)"
        lines = []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "(options)"
            msg = "unknown option" if err["type"] == "extra_forbidden" else err["msg"]
            lines.append(f"{loc}: {msg}")
        raise RecipeError(f"{where}: invalid options:\n  " + "\n  ".join(lines),
                          hint=f"valid options for {cls.name}: {valid}") from None


def plan_build(recipe: Recipe, registry: Registry) -> Plan:
    """Resolve every method and exporter and validate their options, or raise naming what is wrong."""
    stages: list[PlannedStage] = []
    slots = [("prune", s) for s in recipe.prune] + ([("heal", recipe.heal)] if recipe.heal else []) \
        + ([("quantize", recipe.quantize)] if recipe.quantize else [])
    for i, (slot, spec) in enumerate(slots):
        cls = registry.method(spec.method)
        if cls.stage != slot:
            raise RecipeError(f"{cls.name!r} is a {cls.stage} method but the recipe uses it as a {slot} stage",
                              hint=f"move it to the recipe's `{cls.stage}` section")
        where = f"{slot}[{i}] ({spec.method})" if slot == "prune" else f"{slot} ({spec.method})"
        options = _validate_options(cls, spec.options, where)
        stages.append(PlannedStage(i, slot, spec, _instantiate(cls), options, registry.origin("method", cls.name)))
    exports = []
    for spec in recipe.export:
        cls = registry.exporter(spec.format)
        options = _validate_options(cls, spec.options, f"export {spec.dirname} ({spec.format})")
        exports.append(PlannedExport(spec, _instantiate(cls), options, registry.origin("exporter", cls.name)))
    if not exports:
        raise RecipeError("the recipe has no export", hint="add at least one entry under `export`")
    return Plan(recipe, stages, exports, plan_evaluators(recipe.verify, registry) if recipe.verify.enabled else [])


def plan_evaluators(spec: VerifySpec, registry: Registry) -> list[PlannedEvaluator]:
    """Resolve verify's evaluators and check that every max_drop budget names a task one of them reports."""
    planned = []
    for i, ev in enumerate(spec.evaluators):
        cls = registry.evaluator(ev.name)
        planned.append(PlannedEvaluator(ev, _instantiate(cls),
                                        _validate_options(cls, ev.options, f"verify.evaluators[{i}] ({ev.name})")))
    tasks = {t for p in planned for t in p.evaluator.tasks(p.options)}
    for key in spec.budgets.max_drop:
        task = key.rsplit(".", 1)[0]
        if not planned:
            raise RecipeError(f"budget max_drop.{key} needs an evaluator, and verify runs none",
                              hint="add one, e.g. --evaluator lm_eval -V tasks=" + task)
        if task not in tasks:
            raise RecipeError(f"budget max_drop.{key}: no evaluator reports task {task!r} "
                              f"(tasks: {', '.join(sorted(tasks)) or 'none'})",
                              hint="name the task in the evaluator's options, or fix the budget's name")
    for p in planned:
        p.evaluator.check_environment(p.options)
    return planned


def _instantiate(cls: type[Any]) -> Any:
    try:
        return cls()
    except Exception as exc:
        raise PluginError(f"plugin class {cls.__name__} ({cls.name}) could not be created: {exc}") from exc


def feasibility(plan: Plan) -> list[dict[str, Any]]:
    """Say, per export target, what speed and size each requested compression kind can bring."""
    kinds: dict[Kind, list[str]] = {}
    for st in plan.stages:
        for kind in st.method.kinds(st.options):
            kinds.setdefault(kind, []).append(st.spec.method)
    rows = []
    for ex in plan.exports:
        table = ex.exporter.benefits(ex.options)
        for kind, methods in kinds.items():
            benefit = table.get(kind, Benefit(False, False, "this exporter declares no benefit for it"))
            rows.append({"export": ex.spec.dirname, "runtime": ex.exporter.runtime_name, "kind": kind.value,
                         "methods": methods, "speed": benefit.speed, "size": benefit.size, "note": benefit.note})
    return rows


def check_feasibility(rows: list[dict[str, Any]], strict: bool, log: Log) -> list[str]:
    """Print what each target can gain; with ``strict`` a kind with no benefit at all is an error."""
    warnings = []
    for r in rows:
        if not r["speed"]:
            gain = "a smaller file but no speed-up" if r["size"] else "no speed-up and no size reduction"
            msg = (f"{', '.join(r['methods'])} ({r['kind']}) gives {gain} in {r['runtime']} "
                   f"(export {r['export']}){': ' + r['note'] if r['note'] else ''}")
            warnings.append(msg)
            log(f"warning: {msg}")
        else:
            log(f"{r['runtime']} ({r['export']}): {r['kind']} can make it faster"
                f"{' and smaller' if r['size'] else ''}; verify will measure it")
    if strict:
        useless = [r for r in rows if not r["speed"] and not r["size"]]
        if useless:
            r = useless[0]
            raise NoBenefitError(f"--strict: {r['kind']} from {', '.join(r['methods'])} cannot make the "
                                 f"{r['runtime']} export faster or smaller",
                                 hint="remove that stage, choose structured pruning (layers, width) or quantization,"
                                      " or drop --strict")
    return warnings
