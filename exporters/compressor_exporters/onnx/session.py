"""An ONNX Runtime session over the decoder graph, stepping with a KV cache kept as OrtValues."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from compressor.api import RuntimeUnavailableError, usable_cpu_count
from compressor_exporters.onnx.io_spec import DecoderIO

CPU = "CPUExecutionProvider"


def session_options(threads: int | None = None) -> Any:
    """ORT session options: full graph optimisation, intra-op threads, no spinning between runs."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only: ORT warns about every unused initializer otherwise
    # ORT's own default counts the machine's cores, not the ones this process may use (taskset, a cpuset)
    opts.intra_op_num_threads = int(threads or usable_cpu_count())
    # Threads keep spinning during a Run but stop when it returns. Left spinning (ORT's default), an
    # idle session's threads burn the cores for tens of ms after each call, which slowed the first
    # prefill of the other model timed next (verify interleaves two runtimes) by 10-20% on 2 cores.
    opts.add_session_config_entry("session.force_spinning_stop", "1")
    return opts


class DecoderSession:
    """Runs prefill and decode steps of one exported decoder graph.

    The cache is a dict of past-input name -> OrtValue; feeding the previous step's present
    OrtValues back avoids copying the cache through numpy on every token.
    """

    def __init__(self, artifact: Path, io: DecoderIO, threads: int | None = None,
                 providers: list[str] | None = None, model_file: str | None = None) -> None:
        import onnxruntime as ort

        self.io = io
        self.path = Path(artifact) / (model_file or io.model_file)
        self.providers = providers or [CPU]
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=session_options(threads),
                                                providers=self.providers)
        except Exception as exc:
            raise RuntimeUnavailableError(f"ONNX Runtime could not load {self.path}: {type(exc).__name__}: {exc}",
                                          hint="re-export the model; check that onnxruntime matches the "
                                               "one used at export (see onnx-io.json)") from exc
        self.kv_dtype = np.dtype(io.dtype)
        self._past = io.past_names()
        self._outputs = io.output_names()

    def empty_cache(self, batch: int) -> dict[str, Any]:
        """A zero-length past for every attention layer."""
        import onnxruntime as ort

        cache = {}
        for i in self.io.attention_layers:
            shape = (batch, self.io.kv_heads[i], 0, self.io.head_dim)
            for name in (f"past_key_values.{i}.key", f"past_key_values.{i}.value"):
                cache[name] = ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, self.kv_dtype))
        return cache

    def step(self, input_ids: np.ndarray, cache: dict[str, Any] | None, past_len: int) -> tuple[Any, dict[str, Any]]:
        """Run ``input_ids`` [B, S] after ``past_len`` cached tokens; return (logits OrtValue, new cache)."""
        import onnxruntime as ort

        ids = np.ascontiguousarray(input_ids, dtype=np.int64)
        batch, seq = ids.shape
        if cache is None:
            cache = self.empty_cache(batch)
        positions = np.broadcast_to(np.arange(past_len, past_len + seq, dtype=np.int64), (batch, seq))
        feeds = {"input_ids": ort.OrtValue.ortvalue_from_numpy(ids),
                 "attention_mask": ort.OrtValue.ortvalue_from_numpy(np.ones((batch, past_len + seq), np.int64)),
                 "position_ids": ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(positions)), **cache}
        outs = self.session.run_with_ort_values(self._outputs, feeds)
        return outs[0], dict(zip(self._past, outs[1:]))

    def logits(self, input_ids: np.ndarray, cache: dict[str, Any] | None = None,
               past_len: int = 0) -> tuple[np.ndarray, dict[str, Any]]:
        """Like :meth:`step` but return the logits as a float32 numpy array."""
        logits, cache = self.step(input_ids, cache, past_len)
        return logits.numpy().astype(np.float32, copy=False), cache

    def providers_in_use(self) -> list[str]:
        """The execution providers ORT actually assigned."""
        return list(self.session.get_providers())
