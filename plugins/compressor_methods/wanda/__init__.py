"""Wanda pruning plugin (entry point ``wanda``)."""

from compressor import hookimpl
from compressor_methods.wanda.method import Wanda, WandaOptions


# the compressor.api versions this plugin works with (checked by the host when it loads it)
COMPRESSOR_API = ">=1.0,<2"


@hookimpl
def register_methods(register):  # type: ignore[no-untyped-def]
    """Register the ``wanda`` method."""
    register(Wanda)


__all__ = ["Wanda", "WandaOptions", "register_methods"]
