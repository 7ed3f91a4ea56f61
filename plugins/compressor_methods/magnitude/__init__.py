"""Magnitude pruning plugin (entry point ``magnitude``)."""

from compressor import hookimpl
from compressor_methods.magnitude.method import Magnitude, MagnitudeOptions, magnitude_prune


# the compressor.api versions this plugin works with (checked by the host when it loads it)
COMPRESSOR_API = ">=1.0,<2"


@hookimpl
def register_methods(register):  # type: ignore[no-untyped-def]
    """Register the ``magnitude`` method."""
    register(Magnitude)


__all__ = ["Magnitude", "MagnitudeOptions", "magnitude_prune", "register_methods"]
