"""Weight quantization of the exported graph with onnxruntime.quantization (int8 dynamic, int4 MatMulNBits)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from compressor.api import ExportError


def quantize_int8(src: Path, dst: Path, per_channel: bool, external_data: bool) -> dict[str, Any]:
    """Dynamic int8 (ORT quantize_dynamic): int8 weights in [-64, 64], uint8 activations quantized per call."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic logs a generic "consider pre-processing" warning at root
    try:
        # reduce_range (7-bit weights) is needed for correctness, not only precision: on x86 CPUs
        # without VNNI (AVX2; AVX-512 before VNNI) ORT's uint8 x int8 kernels add pairs of u8*s8
        # products in a saturating int16 (vpmaddubsw), and full-range weights overflow it wherever
        # an activation's zero point is high. SmolLM2's outlier channels push it towards 255: its
        # int8 graph gave logits with cosine -0.64 to the fp32 graph's, on an AVX2 host. |w| <= 64
        # keeps 255*64*2 < 2**15, so the graph is right on every CPU; uint8 weights would be too,
        # but they miss ORT's u8s8 VNNI/AMX kernels. An artifact may run on any CPU, so no option.
        quantize_dynamic(str(src), str(dst), per_channel=per_channel, reduce_range=True,
                         weight_type=QuantType.QInt8, use_external_data_format=external_data)
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:
        raise ExportError(f"onnxruntime quantize_dynamic failed: {type(exc).__name__}: {exc}",
                          hint="export with quantize: none") from exc
    finally:
        root.setLevel(level)
    return {"scheme": "int8", "tool": "onnxruntime.quantization.quantize_dynamic", "weight_type": "QInt8",
            "weight_range": "[-64, 64] (reduce_range: no int16 saturation in U8S8 kernels without VNNI)",
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
