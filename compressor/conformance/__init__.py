"""The conformance kit: check a method or exporter plugin against the plugin contract.

Run it on an installed plugin with ``pytest --compressor-plugin NAME`` (the pytest plugin is
registered through the ``pytest11`` entry point), or from a test module that names its plugins::

    from compressor.conformance.kit import *  # noqa: F401,F403 - the kit's checks
    COMPRESSOR_PLUGIN = "my_method"

Each check is also a plain function (:mod:`compressor.conformance.method_checks`,
:mod:`compressor.conformance.exporter_checks`) that raises :class:`ConformanceError` with what the
plugin got wrong.
"""

from __future__ import annotations


class ConformanceError(AssertionError):
    """A plugin breaks the contract; the message says which rule and how."""


__all__ = ["ConformanceError"]
