"""The `gguf` exporter: one GGUF file written with the `gguf` package, verified in llama.cpp."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from compressor.api import (Benefit, ExportError, Exporter, Kind, ModelHandle, PlanFacts, PluginOptions, Runtime,
                            RuntimeSettings, RuntimeUnavailableError, UsageError)
from compressor_exporters.gguf.tensors import LLAMA_CPP_TYPES, NUMPY_TYPES

OutType = Literal["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
                  "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K"]
GGUF_FILE = "model.gguf"
NO_SPARSE = "llama.cpp has no sparse kernels: zeros are stored and multiplied like any other weight"
# Measured with bench/gguf_speed.py on SmolLM2-135M (1 thread, shared machine): decode tok/s F32 27,
# Q8_0 88 (+0.39% ppl, 145 MB), Q4_K_M 80 (+6.3% ppl, 106 MB: 576-wide rows fall back to Q5_0).
QUANT_NOTES = {
    "F32": "full precision: no size or speed gain over the original weights",
    "F16": "half the bytes of F32; decode is memory-bound, so it is faster than F32",
    "BF16": "half the bytes of F32; decode is memory-bound, so it is faster than F32",
}


class GgufOptions(PluginOptions):
    """Options of the `gguf` exporter."""

    outtype: OutType = Field("F16", description="tensor type: F32/F16/BF16 or Q8_0/Q4_0/Q4_1/Q5_0/Q5_1 (written "
                                                "with gguf.quants), or a llama.cpp K-quant mix such as Q4_K_M "
                                                "(needs llama-cpp-python); norms stay F32, and weights whose "
                                                "rows a type cannot take fall back (listed in the report)")
    tokenizer: Literal["auto", "source", "hf", "none"] = Field(
        "auto", description="tokenizer metadata: auto = copied from the source GGUF when the model came from "
                            "one, else built from the HF tokenizer, else none; none = token ids only")
    name: str | None = Field(None, description="general.name written into the file (default: the model ref)")


def gguf_version() -> str | None:
    """Version of the installed `gguf` package."""
    try:
        return metadata.version("gguf")
    except metadata.PackageNotFoundError:
        return None


class GgufExporter(Exporter):
    """Writes one GGUF file (`llama`, or `deci` for per-layer sizes) and verifies it in llama.cpp."""

    name = "gguf"
    runtime_name = "llama.cpp"
    summary = "single GGUF file (llama, or deci for layers of different sizes), verified in llama.cpp"
    Options = GgufOptions

    def benefits(self, options: Any) -> dict[Kind, Benefit]:
        """Structured pruning pays off in llama.cpp; sparsity does not; the outtype decides quantization."""
        outtype = options.outtype
        table = {
            Kind.DEPTH: Benefit(True, True, "fewer blocks are written and run"),
            Kind.WIDTH: Benefit(True, True, "narrower tensors are written with smaller head counts/FFN width"),
            Kind.HEADS: Benefit(True, True, "fewer heads are written (per layer as arch `deci`)"),
            Kind.NONUNIFORM: Benefit(True, True, "written as arch `deci` with per-layer FFN widths and head "
                                                 "counts, which llama.cpp runs at their real sizes"),
            Kind.UNSTRUCTURED: Benefit(False, False, NO_SPARSE),
            Kind.SEMI_STRUCTURED: Benefit(False, False, NO_SPARSE),
        }
        for kind in (Kind.W8A16, Kind.W4A16, Kind.W8A8):
            table[kind] = Benefit(False, False, f"the GGUF writer stores the dequantized weights as {outtype}; "
                                                "choose a quantized outtype (Q8_0, Q4_K_M) for the gain")
        quantized = outtype not in ("F32", "F16", "BF16")
        note = QUANT_NOTES.get(outtype, f"{outtype} blocks are smaller and llama.cpp decodes them with "
                                        "dedicated kernels (memory-bound decode gets faster)")
        table[Kind.RUNTIME_QUANT] = Benefit(quantized or outtype != "F32", quantized or outtype != "F32", note)
        return table

    def check_model(self, model: ModelHandle, options: Any) -> None:
        """Refuse models llama.cpp cannot run as written, and K-quants without llama-cpp-python."""
        from compressor_exporters.gguf.runtime import INSTALL_HINT, llama_cpp_version
        from compressor_exporters.gguf.tokenizer import bpe_without_merges, merges_missing_error
        from compressor_exporters.gguf.writer import check_supported

        check_supported(model)
        from_source = model.source.kind in ("gguf", "builtin") and options.tokenizer in ("auto", "source")
        if options.tokenizer in ("auto", "hf") and not from_source and bpe_without_merges(model.tokenizer):
            raise merges_missing_error()
        if options.outtype in LLAMA_CPP_TYPES and llama_cpp_version() is None:
            raise ExportError(f"outtype {options.outtype} is made by llama.cpp's quantizer, and llama-cpp-python "
                              "is not installed", hint=INSTALL_HINT + "; or pick F16, Q8_0, Q4_0 or Q4_1")

    def check_plan(self, options: Any, facts: PlanFacts) -> None:
        """Refuse, before any work, per-layer sizes for a family whose llama.cpp architecture cannot hold them."""
        from compressor_exporters.gguf.writer import NATIVE_ARCH, sliding_window

        model_type = getattr(facts.config, "model_type", "llama")
        window = sliding_window(facts.config)
        if window is not None and facts.verify_len is not None and facts.verify_len > window:
            raise UsageError(f"this {model_type} model attends within a sliding window of {window} tokens, which "
                             f"llama.cpp's `{NATIVE_ARCH.get(model_type, 'llama')}` architecture does not apply, "
                             f"and verify runs sequences of up to {facts.verify_len} tokens",
                             hint=f"keep verify's lengths (--eval-seq-len, verify.latency.*) within {window}, or "
                                  "export vllm or onnx, which apply the window")
        if Kind.NONUNIFORM in facts.kinds and NATIVE_ARCH.get(model_type, "llama") != "llama":
            raise UsageError(f"the recipe gives this {model_type} model per-layer sizes, which the GGUF writer "
                             "can express only for Llama and Mistral (llama.cpp's `deci`)",
                             hint="export onnx (per-layer sizes for every family) instead, or keep the layers "
                                  "uniform for gguf")

    def check_environment(self, options: Any, verify: bool) -> None:
        """K-quants are made by llama.cpp's quantizer, and verification runs llama.cpp."""
        from compressor_exporters.gguf.runtime import INSTALL_HINT, llama_cpp_version

        if gguf_version() is None:
            raise RuntimeUnavailableError("the gguf export needs the `gguf` package, which is not installed",
                                          hint="pip install 'compressor-exporters[gguf]'; make setup does it")
        if llama_cpp_version() is None and (verify or options.outtype in LLAMA_CPP_TYPES):
            why = (f"outtype {options.outtype} is made by llama.cpp's quantizer" if options.outtype in LLAMA_CPP_TYPES
                   else "the gguf export is verified in llama.cpp")
            raise RuntimeUnavailableError(f"{why}, and llama-cpp-python is not installed",
                                          hint=INSTALL_HINT + ("; or pick F16, Q8_0, Q4_0 or Q4_1"
                                                               if options.outtype in LLAMA_CPP_TYPES
                                                               else "; or build with --no-verify"))

    def reference_options(self, options: Any) -> Any:
        """The full-precision reference: F16, or F32 where the compressed export is F32."""
        return options.model_copy(update={"outtype": "F32" if options.outtype == "F32" else "F16"})

    def estimate_size(self, options: Any, num_parameters: int) -> int:
        """Bytes per weight of the outtype; K-quants also stage an F32 file while llama.cpp quantizes it."""
        bits = {"F32": 32, "F16": 16, "BF16": 16, "Q8_0": 8.5}.get(options.outtype, 6.0)
        staging = 4 * num_parameters if options.outtype in LLAMA_CPP_TYPES else 0
        return int(bits / 8 * num_parameters) + staging + 32 * 2**20

    def streams_offloaded_models(self, options: Any) -> bool:
        """Weights on disk are declared from their shapes, then written tensor by tensor."""
        return True

    def export(self, model: ModelHandle, dest: Path, options: Any) -> dict[str, Any]:
        """Write ``dest/model.gguf``; K-quants go through an F32 file that llama.cpp quantizes."""
        from compressor_exporters.gguf.kquant import kquant_details, quantize_with_llama_cpp
        from compressor_exporters.gguf.writer import write_gguf

        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        target = dest / GGUF_FILE
        outtype = options.outtype
        if outtype in NUMPY_TYPES:
            details = write_gguf(model, target, outtype, options.tokenizer, options.name)
        else:
            staging = dest / f".{GGUF_FILE}.f32.tmp"
            try:
                details = write_gguf(model, staging, "F32", options.tokenizer, options.name)
                quantize_with_llama_cpp(staging, target, outtype)
            finally:
                staging.unlink(missing_ok=True)
            details.update(kquant_details(target))
            details["outtype"] = outtype
            details["quantizer"] = "llama.cpp llama_model_quantize"
        if not target.is_file() or target.stat().st_size == 0:
            raise ExportError(f"writing {target} produced no file", hint="check free disk space")
        details["file"] = GGUF_FILE
        details["size_bytes"] = target.stat().st_size
        return details

    def open_runtime(self, artifact: Path, options: Any, settings: RuntimeSettings) -> Runtime:
        """Load the GGUF file in llama.cpp (CPU) with ``settings.max_len`` context and ``settings.threads``."""
        from compressor_exporters.gguf.runtime import LlamaCppRuntime

        return LlamaCppRuntime(find_gguf(Path(artifact)), n_ctx=settings.max_len, threads=settings.threads)

    def runtime_versions(self) -> dict[str, str]:
        """Versions of llama-cpp-python and gguf."""
        from compressor_exporters.gguf.runtime import llama_cpp_version

        versions = {"gguf": gguf_version(), "llama_cpp_python": llama_cpp_version()}
        return {k: v for k, v in versions.items() if v}


def find_gguf(artifact: Path) -> Path:
    """Return the GGUF file of an artifact (the file itself, or the one .gguf in a folder)."""
    if artifact.is_file():
        return artifact
    files = sorted(artifact.glob("*.gguf"))
    if len(files) != 1:
        raise ExportError(f"expected exactly one .gguf file in {artifact}, found {len(files)}",
                          hint="pass the directory the gguf exporter wrote")
    return files[0]
