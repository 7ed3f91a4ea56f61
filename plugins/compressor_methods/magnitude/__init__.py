"""Magnitude pruning plugin (entry point ``magnitude``)."""

from compressor import hookimpl
from compressor_methods.magnitude.method import Magnitude, MagnitudeOptions, magnitude_prune


@hookimpl
def register_methods(register):  # type: ignore[no-untyped-def]
    """Register the ``magnitude`` method."""
    register(Magnitude)


__all__ = ["Magnitude", "MagnitudeOptions", "magnitude_prune", "register_methods"]
