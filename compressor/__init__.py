"""compressor: prune, quantize, export and verify LLMs as one release-pipeline step.

The names below are imported on first use (PEP 562), so that ``compress`` can install its
signal handlers before torch and transformers load, and Ctrl-C while they load is one line.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Benefit": "compressor.api", "Exporter": "compressor.api", "Kind": "compressor.api",
    "LatencySamples": "compressor.api", "Method": "compressor.api", "PluginOptions": "compressor.api",
    "Runtime": "compressor.api", "RuntimeSettings": "compressor.api", "StageContext": "compressor.api",
    "TokenScores": "compressor.api", "CompressorError": "compressor.errors", "ExitCode": "compressor.errors",
    "hookimpl": "compressor.hookspecs", "LayerSpec": "compressor.model", "ModelHandle": "compressor.model",
}

__all__ = sorted([*_LAZY, "__version__"])


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'compressor' has no attribute {name!r}")
