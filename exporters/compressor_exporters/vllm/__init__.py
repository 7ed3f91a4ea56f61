"""The `vllm` exporter plugin: HF safetensors for vLLM, verified in a vLLM engine.

Importing this package does not import vLLM; only opening the runtime (which verify does in a
worker process) does.
"""

from __future__ import annotations

from typing import Any

from compressor import hookimpl
from compressor_exporters.vllm.exporter import VllmExporter, VllmOptions

__all__ = ["VllmExporter", "VllmOptions", "register_exporters"]


# the compressor.api versions this plugin works with (checked by the host when it loads it)
COMPRESSOR_API = ">=1.0,<2"


@hookimpl
def register_exporters(register: Any) -> None:
    """Register the `vllm` exporter."""
    register(VllmExporter)
