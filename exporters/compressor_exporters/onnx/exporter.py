"""The `onnx` exporter: one decoder graph with a KV cache, validated against PyTorch in ONNX Runtime."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from compressor.api import (Benefit, ExportError, Exporter, Kind, ModelHandle, PluginOptions, Runtime, RuntimeSettings,
                            RuntimeUnavailableError, counter, is_offloaded)
from compressor_exporters.onnx.decoder_graph import EXTERNAL_DATA_BYTES, export_decoder
from compressor_exporters.onnx.genai_config import write_genai_config
from compressor_exporters.onnx.io_spec import DecoderIO
from compressor_exporters.onnx.quantize import quantize_int4, quantize_int8
from compressor_exporters.onnx.session import DecoderSession
from compressor_exporters.onnx.validation import SessionInChildProcess, validate_against_torch, validate_quantized

FP32_SUBDIR = ".fp32-graph"  # the unquantized graph, kept only while a quantized one is made and checked
DENSE = "ONNX Runtime's CPU MatMul is dense: zeros are stored and multiplied like any other weight"


class OnnxOptions(PluginOptions):
    """Options of the `onnx` exporter."""

    dtype: Literal["float32", "float16"] = Field(
        "float32", description="dtype of the graph's weights, activations and KV cache; float16 runs on "
                               "ONNX Runtime CPU but slower than float32 there")
    quantize: Literal["none", "int8", "int4"] = Field(
        "none", description="weight quantization by onnxruntime.quantization: int8 = quantize_dynamic, "
                            "int4 = MatMulNBits weight-only round-to-nearest (needs dtype float32)")
    int4_block_size: Literal[32, 128] = Field(32, description="int4: weights per quantization block")
    int4_symmetric: bool = Field(False, description="int4: symmetric blocks (no zero point)")
    per_channel: bool = Field(True, description="int8: one scale per output channel instead of per tensor; "
                                                "weights use [-64, 64] so that ORT's int8 kernels cannot "
                                                "overflow on CPUs without VNNI")
    atol: float | None = Field(None, gt=0, le=100, description="largest allowed |ONNX - PyTorch| logit "
                                                               "difference (default 1e-3 for float32, "
                                                               "max(0.05, 0.5% of the logit range) for float16)")
    quant_min_cosine: float | None = Field(None, gt=0, le=1, description="quantized graphs: least mean "
                                                                         "cosine similarity of logits with "
                                                                         "the float32 graph (default 0.95 "
                                                                         "int8, 0.90 int4)")

    @model_validator(mode="after")
    def _quantize_needs_fp32(self) -> OnnxOptions:
        if self.quantize != "none" and self.dtype != "float32":
            raise ValueError(f"quantize: {self.quantize} works on a float32 graph; set dtype: float32")
        return self


class OnnxExporter(Exporter):
    """Writes model.onnx (decoder with KV cache, per-layer shapes) and verifies it in ONNX Runtime."""

    name = "onnx"
    runtime_name = "ONNX Runtime"
    summary = "ONNX decoder graph with KV cache (any per-layer sizes), optional int8/int4, run in ONNX Runtime"
    Options = OnnxOptions

    def benefits(self, options: Any) -> dict[Kind, Benefit]:
        """Structured pruning of any shape pays off; sparsity does not; runtime quantization shrinks the file."""
        fake_quant = Benefit(False, False, "written as dequantized float weights; use this exporter's "
                                           "`quantize` option for real int8/int4 weights")
        table = {
            Kind.DEPTH: Benefit(True, True, "fewer decoder layers in the graph"),
            Kind.WIDTH: Benefit(True, True, "smaller matrices in every layer"),
            Kind.HEADS: Benefit(True, True, "fewer heads: smaller attention matrices and KV cache"),
            Kind.NONUNIFORM: Benefit(True, True, "each layer's matrices and KV cache keep their own sizes"),
            Kind.UNSTRUCTURED: Benefit(False, False, DENSE),
            Kind.SEMI_STRUCTURED: Benefit(False, False, DENSE + "; ORT has no 2:4 sparse kernel on CPU"),
            Kind.W8A16: fake_quant, Kind.W4A16: fake_quant, Kind.W8A8: fake_quant,
        }
        if options.quantize == "int8":
            table[Kind.RUNTIME_QUANT] = Benefit(
                True, True, "int8 weights: SmolLM2's graph 0.26x the fp32 size, prefill 1.27x and decode 1.08x faster "
                            "on a 2-core AVX2 CPU, but perplexity +79% (dynamic int8 activations; "
                            "bench/onnx_quant_speed.py)")
        elif options.quantize == "int4":
            table[Kind.RUNTIME_QUANT] = Benefit(
                True, True, "4-bit MatMulNBits weights: SmolLM2's graph 0.34x the fp32 size, decode 1.07x (block 32) "
                            "to 1.26x (block 128) faster on a 2-core AVX2 CPU, perplexity +25% at block 32 "
                            "(bench/onnx_quant_speed.py)")
        else:
            table[Kind.RUNTIME_QUANT] = Benefit(False, False, "quantize: none")
        return table

    def check_model(self, model: ModelHandle, options: Any) -> None:
        """Refuse models that are not HF decoders with a layer list, or that have no attention left."""
        inner = getattr(model.model, "model", None)
        if inner is None or not hasattr(inner, "layers"):
            raise ExportError(f"the onnx exporter needs an HF *ForCausalLM with model.layers, got "
                              f"{type(model.model).__name__}", hint="load a Llama-family model")
        if not any(s.num_heads and s.num_kv_heads for s in model.layer_specs()):
            raise ExportError("the model has no attention layer left, so it has no KV cache to export",
                              hint="keep at least one attention layer when pruning")

    def streams_offloaded_models(self, options: Any) -> bool:
        """Weights on disk are written tensor by tensor into external data; quantizing the graph needs it whole."""
        return options.quantize == "none"

    def export(self, model: ModelHandle, dest: Path, options: Any) -> dict[str, Any]:
        """Export, validate against PyTorch, optionally quantize and validate again, then write the side files."""
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        quantized = options.quantize != "none"
        graph_dir = dest / FP32_SUBDIR if quantized else dest
        graph_dir.mkdir(exist_ok=True)
        # progress over the export's phases: trace and write, validate, and quantize (which validates again)
        phases = "onnx: trace and write, validate" + (", quantize" if quantized else "")
        with counter(phases, 3 if quantized else 2) as advance:
            return self._export(model, dest, graph_dir, options, quantized, advance)

    def _export(self, model: ModelHandle, dest: Path, graph_dir: Path, options: Any, quantized: bool,
                advance: Callable[[], None]) -> dict[str, Any]:
        io = export_decoder(model, graph_dir, options.dtype)
        advance()
        # no timings here: the details go into the artifact's record, which a replay compares byte for byte
        # (the export's seconds are in the report's usage)
        details: dict[str, Any] = {"dtype": options.dtype, "layers": io.num_layers, "kv_heads": io.kv_heads,
                                   "head_dim": io.head_dim}
        try:
            # weights on disk: ONNX Runtime holds the whole graph, so it runs in a child process
            offloaded = is_offloaded(model.model)
            session = SessionInChildProcess(graph_dir, io) if offloaded else DecoderSession(graph_dir, io)
            details["validation"] = validate_against_torch(model, session, options.dtype, options.atol)
            advance()
            if quantized:
                io.save(graph_dir)
                details.update(quantize_artifact(graph_dir, dest, options))
                advance()
                io = DecoderIO.load(dest)
        finally:
            if quantized:
                shutil.rmtree(graph_dir, ignore_errors=True)
        io.save(dest)
        details["genai_config"] = write_genai_config(model, io, dest) is not None
        if model.tokenizer is not None:
            model.tokenizer.save_pretrained(dest)
        else:
            details["note"] = "no tokenizer was written: the graph scores token ids only"
        details["tokenizer"] = model.tokenizer is not None
        details["files"] = sorted(p.name for p in dest.iterdir())
        details["graph_bytes"] = sum(p.stat().st_size for p in dest.glob(io.model_file + "*"))
        details.update(self.runtime_versions())
        return details

    def check_environment(self, options: Any, verify: bool) -> None:
        """The export itself runs onnx, onnxscript and ONNX Runtime (it validates the graph in ORT)."""
        import importlib.util

        missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
        if missing:
            raise RuntimeUnavailableError(f"the onnx export needs {', '.join(missing)}, which is not installed",
                                          hint="pip install 'compressor-exporters[onnx]'; make setup does it")

    def reference_options(self, options: Any) -> Any:
        """The full-precision reference: a float32 graph without quantization (the other options kept)."""
        return options.model_copy(update={"dtype": "float32", "quantize": "none", "atol": None,
                                          "quant_min_cosine": None})

    def estimate_size(self, options: Any, num_parameters: int) -> int:
        """Graph weights at the chosen precision (int4 and int8 keep the embeddings in float32)."""
        per_param = {"none": 4 if options.dtype == "float32" else 2, "int8": 2, "int4": 2}[options.quantize]
        return per_param * num_parameters + 32 * 2**20

    def open_runtime(self, artifact: Path, options: Any, settings: RuntimeSettings) -> Runtime:
        """Open model.onnx in an onnxruntime CPU session (intra-op threads from ``settings.threads``)."""
        from compressor_exporters.onnx.runtime import OnnxRuntime

        providers = None
        if settings.device.startswith("cuda"):
            if not _has_cuda_provider():
                raise RuntimeUnavailableError(f"device {settings.device!r} was asked for, but this onnxruntime "
                                              "build has no CUDAExecutionProvider",
                                              hint="verify with device: cpu, or install onnxruntime-gpu")
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        return OnnxRuntime(Path(artifact), threads=settings.threads, providers=providers)

    def runtime_versions(self) -> dict[str, str]:
        """onnx, onnxruntime, onnxscript and torch versions."""
        import onnx
        import onnxruntime
        import onnxscript
        import torch

        return {"onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__,
                "onnxscript": onnxscript.__version__, "torch": torch.__version__}


def quantize_artifact(src: Path, dest: Path, options: OnnxOptions) -> dict[str, Any]:
    """Quantize the float32 graph in ``src`` into ``dest`` (graph and onnx-io.json) and check it against ``src``.

    Raises :class:`compressor.errors.ValidationMismatchError` when the quantized graph disagrees
    with the float32 one; returns the quantization settings and the agreement figures.
    """
    io = DecoderIO.load(src)
    if options.quantize == "none" or io.dtype != "float32" or io.quantization:
        raise ExportError(f"cannot quantize {src} with quantize={options.quantize!r}: it needs an unquantized "
                          f"float32 graph (this one: {io.dtype}, quantization {io.quantization})",
                          hint="export with dtype float32 and quantize none first")
    graph = Path(src) / io.model_file
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    external = sum(p.stat().st_size for p in graph.parent.glob(graph.name + "*")) > EXTERNAL_DATA_BYTES
    if options.quantize == "int8":
        info = quantize_int8(graph, dest / io.model_file, options.per_channel, external)
    else:
        info = quantize_int4(graph, dest / io.model_file, options.int4_block_size, options.int4_symmetric, external)
    io.quantization = info
    io.save(dest)
    agreement = validate_quantized(DecoderSession(dest, io), DecoderSession(src, io), options.quantize,
                                   options.quant_min_cosine)
    return {"quantization": info, "quantized_validation": agreement}


def _has_cuda_provider() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()

