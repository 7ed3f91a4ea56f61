"""SparseGPT pruning plugin (entry point ``sparsegpt``)."""

from compressor import hookimpl
from compressor_methods.sparsegpt.method import SparseGPT, SparseGPTOptions


# the compressor.api versions this plugin works with (checked by the host when it loads it)
COMPRESSOR_API = ">=1.0,<2"


@hookimpl
def register_methods(register):  # type: ignore[no-untyped-def]
    """Register the ``sparsegpt`` method."""
    register(SparseGPT)


__all__ = ["SparseGPT", "SparseGPTOptions", "register_methods"]
