"""The `gguf` exporter plugin: a GGUF file written with the `gguf` package, verified in llama.cpp.

Modules: :mod:`.writer` (arch choice, hyperparameters, tensors), :mod:`.tensors` (Q/K reordering,
per-tensor encoding), :mod:`.tokenizer` (tokenizer metadata), :mod:`.kquant` (llama.cpp's quantizer)
and :mod:`.runtime` (llama-cpp-python). Importing this package imports neither gguf nor llama_cpp.
"""

from __future__ import annotations

from typing import Any

from compressor import hookimpl
from compressor_exporters.gguf.exporter import GgufExporter, GgufOptions

__all__ = ["GgufExporter", "GgufOptions", "register_exporters"]


# the compressor.api versions this plugin works with (checked by the host when it loads it)
COMPRESSOR_API = ">=1.5,<2"  # usable_cpu_count


@hookimpl
def register_exporters(register: Any) -> None:
    """Register the `gguf` exporter."""
    register(GgufExporter)
