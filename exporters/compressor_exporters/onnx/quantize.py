"""Weight quantization of the exported graph with onnxruntime.quantization (int8 dynamic, int4 MatMulNBits)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from compressor.errors import ExportError


def quantize_int8(src: Path, dst: Path, per_channel: bool, external_data: bool) -> dict[str, Any]:
    """Dynamic int8 quantization: int8 weights, activations quantized per call (ORT's quantize_dynamic)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic logs a generic "consider pre-processing" warning at root
    try:
        quantize_dynamic(str(src), str(dst), per_channel=per_channel, reduce_range=False,
                         weight_type=QuantType.QInt8, use_external_data_format=external_data)
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:
        raise ExportError(f"onnxruntime quantize_dynamic failed: {type(exc).__name__}: {exc}",
                          hint="export with quantize: none") from exc
    finally:
        root.setLevel(level)
    return {"scheme": "int8", "tool": "onnxruntime.quantization.quantize_dynamic", "weight_type": "QInt8",
            "activations": "uint8, quantized dynamically per call", "per_channel": per_channel}


def quantize_int4(src: Path, dst: Path, block_size: int, symmetric: bool, external_data: bool) -> dict[str, Any]:
    """Weight-only 4-bit blockwise round-to-nearest (MatMulNBits), ORT's default weight-only algorithm."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (DefaultWeightOnlyQuantConfig,
                                                                 MatMulNBitsQuantizer)

    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=symmetric, bits=4,
                                          op_types_to_quantize=("MatMul",))
    try:
        quantizer = MatMulNBitsQuantizer(str(src), bits=4, block_size=block_size, is_symmetric=symmetric,
                                         op_types_to_quantize=("MatMul",), algo_config=config)
        quantizer.process()
        quantizer.model.save_model_to_file(str(dst), use_external_data_format=external_data)
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:
        raise ExportError(f"onnxruntime MatMulNBitsQuantizer failed: {type(exc).__name__}: {exc}",
                          hint="try int4_block_size 32, or export with quantize: none") from exc
    replaced = sum(1 for n in quantizer.model.model.graph.node if n.op_type == "MatMulNBits")
    return {"scheme": "int4", "tool": "onnxruntime.quantization.MatMulNBitsQuantizer",
            "algorithm": "blockwise round-to-nearest (min-max per block, weight-only)", "bits": 4,
            "block_size": block_size, "symmetric": symmetric, "matmuls_quantized": replaced}
