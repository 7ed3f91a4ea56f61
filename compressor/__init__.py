"""compressor: prune, quantize, export and verify LLMs as one release-pipeline step."""

from compressor.api import (Benefit, Exporter, Kind, LatencySamples, Method, PluginOptions, Runtime,
                            RuntimeSettings, StageContext, TokenScores)
from compressor.errors import CompressorError, ExitCode
from compressor.hookspecs import hookimpl
from compressor.model import LayerSpec, ModelHandle

__version__ = "0.1.0"

__all__ = ["Benefit", "CompressorError", "ExitCode", "Exporter", "Kind", "LatencySamples", "LayerSpec", "Method",
           "ModelHandle", "PluginOptions", "Runtime", "RuntimeSettings", "StageContext", "TokenScores",
           "__version__", "hookimpl"]
