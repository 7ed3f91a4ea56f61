"""Quantize methods plugin (entry point ``quantize``): round-to-nearest and GPTQ, W4A16 / W8A16 / W8A8."""

from compressor import hookimpl
from compressor_methods.quantize.methods import GPTQ, RTN, GPTQOptions, QuantizeOptions


# the compressor.api versions this plugin works with (checked by the host when it loads it)
COMPRESSOR_API = ">=1.0,<2"


@hookimpl
def register_methods(register):  # type: ignore[no-untyped-def]
    """Register the ``rtn`` and ``gptq`` methods."""
    register(RTN)
    register(GPTQ)


__all__ = ["GPTQ", "GPTQOptions", "QuantizeOptions", "RTN", "register_methods"]
