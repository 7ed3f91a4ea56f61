"""Healing by knowledge distillation: ``distill`` trains the pruned model (student) to match the original (teacher).

The stage runs after the prune stages and before quantize. The tensor maths (losses, LoRA merge,
memory arithmetic) live in their own modules; :mod:`.method` wires them to the host.
"""

from __future__ import annotations

from compressor import hookimpl
from compressor.api import RegisterMethod

from .method import Distill
from .options import DistillOptions

# the compressor.api versions this plugin works with: the heal stage and StageContext.teacher() came in 1.3
COMPRESSOR_API = ">=1.3,<2"


@hookimpl
def register_methods(register: RegisterMethod) -> None:
    """Register ``distill``."""
    register(Distill)


__all__ = ["Distill", "DistillOptions"]
