"""LLM Surgeon pruning plugin (entry point ``surgeon``)."""

from compressor import hookimpl
from compressor_methods.surgeon.method import Surgeon
from compressor_methods.surgeon.options import SurgeonOptions


# the compressor.api versions this plugin works with (checked by the host when it loads it)
COMPRESSOR_API = ">=1.0,<2"


@hookimpl
def register_methods(register):  # type: ignore[no-untyped-def]
    """Register the ``surgeon`` method."""
    register(Surgeon)


__all__ = ["Surgeon", "SurgeonOptions", "register_methods"]
