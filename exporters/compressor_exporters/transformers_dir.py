"""The `transformers` exporter: a stock Hugging Face safetensors directory, verified in PyTorch.

Its writer (:func:`write_hf_dir`) is shared by every exporter that ships an HF directory (vLLM too).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from compressor import hookimpl
from compressor.api import (Benefit, ExportError, Exporter, Kind, ModelHandle, PluginOptions, Runtime, RuntimeSettings,
                            RuntimeUnavailableError)

HFDtype = Literal["float32", "bfloat16", "float16"]

DENSE_ZEROS = "zeros are stored and multiplied like any other weight (dense safetensors)"


class TransformersOptions(PluginOptions):
    """Options of the `transformers` exporter."""

    dtype: HFDtype = Field("float32", description="dtype of the saved weights (float32, bfloat16 or float16)")


def check_uniform(model: ModelHandle, fmt: str) -> None:
    """Raise :class:`ExportError` when the layers differ in size: a stock HF config cannot say so."""
    if not model.is_uniform():
        shapes = sorted({(s.num_heads, s.num_kv_heads, s.intermediate_size) for s in model.layer_specs()})
        raise ExportError(f"the {fmt} export needs every layer to have the same size, but this model has "
                          f"{len(shapes)} layer shapes (heads, kv heads, ffn): {shapes[:4]}",
                          hint="prune with uniform widths, or export with a format that supports "
                               "per-layer sizes (gguf, onnx)")


def write_hf_dir(model: ModelHandle, dest: Path, dtype: str) -> dict[str, Any]:
    """Write ``model`` as a stock HF safetensors directory (config, weights, tokenizer) in ``dtype``."""
    import torch

    dest = Path(dest)
    model.save_hf(dest, getattr(torch, dtype))
    weights = sorted(dest.glob("*.safetensors"))
    if not weights or not (dest / "config.json").is_file():
        raise ExportError(f"saving the model to {dest} wrote no config.json or *.safetensors",
                          hint="check free disk space and the write permissions of the output directory")
    return {"dtype": dtype, "layers": model.num_layers, "parameters": model.num_parameters(),
            "weight_bytes": sum(f.stat().st_size for f in weights),
            "files": sorted(f.name for f in dest.iterdir()),
            "tokenizer": model.tokenizer is not None}


def load_hf_model(artifact: Path, device: str = "cpu") -> Any:
    """Load an exported HF directory with stock transformers: local files only, no remote code."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(str(artifact), dtype="auto", trust_remote_code=False,
                                                     local_files_only=True)
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:
        raise RuntimeUnavailableError(f"transformers could not load {artifact}: {type(exc).__name__}: {exc}",
                                      hint="the directory must hold config.json and *.safetensors written by "
                                           "the transformers or vllm exporter") from exc
    model.eval()
    return model.to(device)


def structural_benefits() -> dict[Kind, Benefit]:
    """What any runtime that runs a dense HF checkpoint gains from each pruning kind."""
    return {
        Kind.DEPTH: Benefit(True, True, "fewer decoder layers are written and run"),
        Kind.WIDTH: Benefit(True, True, "narrower layers are written with a smaller config"),
        Kind.HEADS: Benefit(True, True, "fewer heads in every layer are written with a smaller config"),
        Kind.NONUNIFORM: Benefit(False, False, "a stock HF config cannot describe layers of different sizes; "
                                               "the export refuses such a model"),
        Kind.UNSTRUCTURED: Benefit(False, False, DENSE_ZEROS),
        Kind.SEMI_STRUCTURED: Benefit(False, False, DENSE_ZEROS),
    }


class TransformersExporter(Exporter):
    """Writes a stock HF safetensors directory and verifies it in PyTorch (transformers)."""

    name = "transformers"
    runtime_name = "PyTorch (transformers)"
    summary = "stock Hugging Face safetensors directory, verified with transformers in PyTorch"
    Options = TransformersOptions

    def benefits(self, options: Any) -> dict[Kind, Benefit]:
        """Structured pruning pays off; sparse zeros and fake-quantized weights stay dense."""
        table = structural_benefits()
        for kind in (Kind.W8A16, Kind.W4A16, Kind.W8A8):
            table[kind] = Benefit(False, False, f"weights are written dequantized in {options.dtype}")
        table[Kind.RUNTIME_QUANT] = Benefit(False, False, "the transformers directory quantizes nothing itself")
        return table

    def check_model(self, model: ModelHandle, options: Any) -> None:
        """Refuse models whose layers differ in size."""
        check_uniform(model, self.name)

    def streams_offloaded_models(self, options: Any) -> bool:
        """Weights on disk are written shard by shard, one block of rows at a time."""
        return True

    def export(self, model: ModelHandle, dest: Path, options: Any) -> dict[str, Any]:
        """Write the HF directory."""
        return write_hf_dir(model, dest, options.dtype)

    def estimate_size(self, options: Any, num_parameters: int) -> int:
        """Weights in the export dtype, plus the tokenizer."""
        return (4 if options.dtype == "float32" else 2) * num_parameters + 32 * 2**20

    def open_runtime(self, artifact: Path, options: Any, settings: RuntimeSettings) -> Runtime:
        """Load the directory with AutoModelForCausalLM in its saved dtype on ``settings.device``."""
        from compressor.api import TorchRuntime

        return TorchRuntime(load_hf_model(Path(artifact), settings.device))

    def runtime_versions(self) -> dict[str, str]:
        """torch and transformers versions."""
        import torch
        import transformers

        return {"torch": torch.__version__, "transformers": transformers.__version__}


# the compressor.api versions this plugin works with (checked by the host when it loads it)
COMPRESSOR_API = ">=1.0,<2"


@hookimpl
def register_exporters(register: Any) -> None:
    """Register the `transformers` exporter."""
    register(TransformersExporter)
