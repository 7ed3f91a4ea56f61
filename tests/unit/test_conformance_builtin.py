"""The conformance kit passes on every built-in plugin: nine methods, four exporters and the lm_eval evaluator.

The tests are the kit's own (compressor/conformance/kit.py), parametrized over the plugins below,
exactly as a third party runs them with ``pytest --compressor-plugin NAME``.
"""

from compressor.conformance.kit import *  # noqa: F401,F403

COMPRESSOR_PLUGIN = ["magnitude", "layer_drop", "wanda", "sparsegpt", "quantize", "surgeon", "distill", "lm_eval",
                     "transformers", "onnx", "gguf", "vllm"]
