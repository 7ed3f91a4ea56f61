"""The hooks a compressor plugin implements.

A plugin is a module or object with functions marked ``@compressor.hookimpl``.
It is found through the ``compressor`` entry-point group, the same way for the
built-in plugins and for third-party packages. Hooks receive a ``register``
callable (the style of simonw/llm), and may accept only the arguments they use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import pluggy

if TYPE_CHECKING:
    from compressor.api import Evaluator, Exporter, Method

PROJECT = "compressor"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class RegisterMethod(Protocol):
    """Callable passed to :func:`register_methods`."""

    def __call__(self, method: type[Method]) -> None: ...


class RegisterExporter(Protocol):
    """Callable passed to :func:`register_exporters`."""

    def __call__(self, exporter: type[Exporter]) -> None: ...


class RegisterEvaluator(Protocol):
    """Callable passed to :func:`register_evaluators`."""

    def __call__(self, evaluator: type[Evaluator]) -> None: ...


@hookspec
def register_methods(register: RegisterMethod) -> None:
    """Register prune and quantize methods.

    :param register: call ``register(MethodClass)`` once per
        :class:`compressor.api.Method` subclass; ``MethodClass.name`` becomes the
        recipe's ``method``. A name registered twice is a :class:`DuplicateNameError`.
    """


@hookspec
def register_exporters(register: RegisterExporter) -> None:
    """Register exporters, each writing one artifact format and verifying it in its runtime.

    :param register: call ``register(ExporterClass)`` once per
        :class:`compressor.api.Exporter` subclass; ``ExporterClass.name`` becomes
        the recipe's ``export[].format``. A name registered twice is an error.
    """


@hookspec
def register_evaluators(register: RegisterEvaluator) -> None:
    """Register evaluators, each measuring task metrics in an export's runtime for the verify gate.

    :param register: call ``register(EvaluatorClass)`` once per
        :class:`compressor.api.Evaluator` subclass; ``EvaluatorClass.name`` becomes the
        recipe's ``verify.evaluators[].name``. A name registered twice is an error.
    """
