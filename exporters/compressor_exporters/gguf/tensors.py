"""Pure tensor maths of the GGUF writer: the Q/K reordering for NORM RoPE and per-tensor encoding."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Types gguf.quants can write in pure numpy, in the order the `outtype` option lists them.
NUMPY_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")
# Mixes only llama.cpp's own quantizer makes (llama_model_quantize); the names are LlamaFileType's.
LLAMA_CPP_TYPES = ("Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K")
FALLBACK_TYPE = "F16"


def permute_for_norm_rope(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Reorder q/k rows (or biases) from HF's rotate-half layout to llama.cpp's interleaved NORM RoPE.

    Within each head, HF pairs dimension j with j + d/2; llama.cpp's NORM mode pairs 2j with 2j+1.
    Moving row j to 2j and row j + d/2 to 2j+1 makes both compute the same rotation.
    """
    rows = weight.shape[0]
    if n_heads <= 0 or rows % (2 * n_heads):
        raise ValueError(f"cannot split {rows} rows into {n_heads} heads of even size")
    rest = weight.shape[1:]
    return (weight.reshape(n_heads, 2, rows // n_heads // 2, *rest)
            .swapaxes(1, 2)
            .reshape(weight.shape))


@dataclass
class EncodedTensor:
    """A tensor ready for GGUFWriter.add_tensor, with the type it was actually written in."""

    data: np.ndarray
    raw_dtype: object | None  # gguf.GGMLQuantizationType, or None for plain f32/f16 arrays
    type_name: str
    fell_back: bool


def block_size(type_name: str) -> int:
    """Number of weights per quantization block of a GGML type (1 for float types)."""
    import gguf

    return gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]][0]


def encoded_type(shape: tuple[int, ...], type_name: str) -> tuple[str, bool]:
    """The type a tensor of ``shape`` is written in for ``type_name``, and whether that is a fallback.

    1-D tensors stay F32; rows whose width is not a multiple of the type's block fall back to F16.
    """
    if len(shape) < 2 or type_name == "F32":
        return "F32", len(shape) >= 2 and type_name != "F32"
    if type_name == "F16":
        return "F16", False
    if shape[-1] % block_size(type_name) != 0:  # e.g. an FFN pruned to a width that is not a multiple of 32
        return FALLBACK_TYPE, True
    return type_name, False


@dataclass(frozen=True)
class TensorLayout:
    """What GGUFWriter.add_tensor_info needs to declare a tensor before its data exists."""

    type_name: str
    fell_back: bool
    dtype: np.dtype
    shape: tuple[int, ...]  # the byte shape for quantized types, as GGUFWriter.add_tensor takes it
    nbytes: int
    raw_dtype: object | None


def tensor_layout(shape: tuple[int, ...], type_name: str) -> TensorLayout:
    """The written layout of a float tensor of ``shape`` encoded for ``type_name`` (no data needed)."""
    import gguf

    written, fell_back = encoded_type(shape, type_name)
    if written in ("F32", "F16"):
        dtype = np.dtype(np.float32 if written == "F32" else np.float16)
        return TensorLayout(written, fell_back, dtype, shape, int(np.prod(shape)) * dtype.itemsize, None)
    qtype = gguf.GGMLQuantizationType[written]
    byte_shape = tuple(int(d) for d in gguf.quants.quant_shape_to_byte_shape(shape, qtype))
    return TensorLayout(written, fell_back, np.dtype(np.uint8), byte_shape, int(np.prod(byte_shape)), qtype)


def encode_tensor(array: np.ndarray, type_name: str) -> EncodedTensor:
    """Encode one float array in ``type_name`` (the type :func:`encoded_type` chooses for its shape)."""
    import gguf

    array = np.ascontiguousarray(array, dtype=np.float32)
    written, fell_back = encoded_type(array.shape, type_name)
    if written == "F32":
        return EncodedTensor(array, None, "F32", fell_back)
    if written == "F16":
        return EncodedTensor(array.astype(np.float16), None, "F16", fell_back)
    qtype = gguf.GGMLQuantizationType[written]
    return EncodedTensor(gguf.quants.quantize(array, qtype), qtype, written, False)
