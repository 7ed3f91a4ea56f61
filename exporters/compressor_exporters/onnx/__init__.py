"""The `onnx` exporter plugin: an ONNX decoder graph with a KV cache, verified in ONNX Runtime.

onnx, onnxruntime and onnxscript are imported only when exporting or verifying.
"""

from __future__ import annotations

from typing import Any

from compressor import hookimpl
from compressor_exporters.onnx.exporter import OnnxExporter, OnnxOptions

__all__ = ["OnnxExporter", "OnnxOptions", "register_exporters"]


# the compressor.api versions this plugin works with (checked by the host when it loads it)
COMPRESSOR_API = ">=1.5,<2"  # usable_cpu_count


@hookimpl
def register_exporters(register: Any) -> None:
    """Register the `onnx` exporter."""
    register(OnnxExporter)
