"""Wanda pruning plugin (entry point ``wanda``)."""

from compressor import hookimpl
from compressor_methods.wanda.method import Wanda, WandaOptions


@hookimpl
def register_methods(register):  # type: ignore[no-untyped-def]
    """Register the ``wanda`` method."""
    register(Wanda)


__all__ = ["Wanda", "WandaOptions", "register_methods"]
