"""K-quant mixes (Q4_K_M, Q6_K, …) made by llama.cpp's own quantizer, which gguf.quants cannot write."""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

from compressor.api import ExportError, usable_cpu_count
from compressor_exporters.gguf.runtime import INSTALL_HINT, import_llama_cpp

K_TYPE_PREFIXES = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ")


def quantize_with_llama_cpp(src: Path, dest: Path, outtype: str, threads: int | None = None) -> None:
    """Quantize the GGUF ``src`` (F32/F16) into ``dest`` as the llama.cpp mix ``outtype``."""
    import gguf

    try:
        llama_cpp = import_llama_cpp()
    except Exception as exc:
        raise ExportError(f"outtype {outtype} is made by llama.cpp's quantizer, and llama-cpp-python is not "
                          "installed", hint=INSTALL_HINT + "; or pick F16, Q8_0, Q4_0 or Q4_1") from exc
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(getattr(gguf.LlamaFileType, f"MOSTLY_{outtype}"))
    params.nthread = threads or usable_cpu_count()
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dest).encode(), ctypes.byref(params))
    if rc != 0 or not dest.is_file():
        raise ExportError(f"llama.cpp's quantizer failed (code {rc}) making {outtype} from {src.name}",
                          hint="try another outtype (Q8_0, Q4_0) or check free disk space")


def tensor_types(path: Path) -> dict[str, tuple[str, int]]:
    """Map each tensor of a GGUF file to its GGML type name and number of dimensions."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    return {t.name: (gguf.GGMLQuantizationType(int(t.tensor_type)).name, len(t.shape)) for t in reader.tensors}


def kquant_details(path: Path) -> dict[str, Any]:
    """Summarise a llama.cpp-quantized file: type counts, and the weights that fell back to a non-K type.

    llama.cpp gives a tensor whose row length is not a multiple of 256 another type (Q4_K → Q5_0,
    Q6_K → Q8_0, F16 when not a multiple of 32); those are listed as fallbacks.
    """
    types = tensor_types(path)
    counts: dict[str, int] = {}
    for t, _ in types.values():
        counts[t] = counts.get(t, 0) + 1
    fallbacks = [name for name, (t, dims) in types.items() if dims >= 2 and not t.startswith(K_TYPE_PREFIXES)]
    return {"tensor_types": counts, "fallback_tensors": fallbacks}
