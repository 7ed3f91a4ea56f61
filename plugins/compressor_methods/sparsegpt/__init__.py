"""SparseGPT pruning plugin (entry point ``sparsegpt``)."""

from compressor import hookimpl
from compressor_methods.sparsegpt.method import SparseGPT, SparseGPTOptions


@hookimpl
def register_methods(register):  # type: ignore[no-untyped-def]
    """Register the ``sparsegpt`` method."""
    register(SparseGPT)


__all__ = ["SparseGPT", "SparseGPTOptions", "register_methods"]
