"""The `lm_eval` evaluator plugin: lm-evaluation-harness tasks run in each export's own runtime.

Modules: :mod:`.adapter` (an lm-eval ``LM`` over a compressor :class:`~compressor.api.Runtime`),
:mod:`.tasks` (where task configs come from: the shipped ``shakespeare_mc``, local YAML files,
lm-eval's registry) and :mod:`.evaluator` (the plugin class). Importing this package does not
import lm-eval: a build that runs no evaluator never pays for it.
"""

from __future__ import annotations

from typing import Any

from compressor import hookimpl
from compressor_evaluators.lm_harness.evaluator import LmEvalEvaluator, LmEvalOptions

__all__ = ["LmEvalEvaluator", "LmEvalOptions", "register_evaluators"]

# the compressor.api versions this plugin works with: 1.1 added evaluators
COMPRESSOR_API = ">=1.1,<2"


@hookimpl
def register_evaluators(register: Any) -> None:
    """Register the `lm_eval` evaluator."""
    register(LmEvalEvaluator)
