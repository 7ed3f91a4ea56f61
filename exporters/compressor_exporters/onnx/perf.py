"""An independent, onnxruntime_perf_test-style timing of a decoder graph: the reference for ``latency()``.

``onnxruntime_perf_test`` (not in the pip wheel) loads the model in its own session with default
options, creates its input tensors once, runs a few untimed warm-up ``Run`` calls and then reports
the average of N timed ones. This module does the same through the Python API, once for a prefill
(the prompt with an empty past) and once for single-token decode steps on a fixed past cache, so
that :meth:`OnnxRuntime.latency` can be checked against a figure that involves no decode loop at all.

``python -m compressor_exporters.onnx.perf DIR`` runs that cross-check on an exported artifact in a
fresh process, as verify's runtime worker times it, and prints the summary as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compressor_exporters.onnx.io_spec import DecoderIO


@dataclass(frozen=True)
class PerfFigures:
    """Mean seconds of one prefill run and of one decode step, perf_test style."""

    prefill_s: float
    decode_step_s: float
    prompt_tokens: int
    past_lengths: tuple[int, ...]

    @property
    def decode_tok_s(self) -> float:
        """Decode tokens per second: one token per step."""
        return 1.0 / self.decode_step_s


def perf_session(artifact: Path, io: DecoderIO | None = None, threads: int | None = None,
                 providers: list[str] | None = None) -> Any:
    """A fresh InferenceSession on the artifact's graph with perf_test's defaults (all graph optimisations)."""
    import onnxruntime as ort

    io = io or DecoderIO.load(artifact)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # perf_test's default (-o 99)
    opts.log_severity_level = 3
    if threads:  # perf_test -x; 0 / unset leaves ORT's own choice
        opts.intra_op_num_threads = int(threads)
    return ort.InferenceSession(str(Path(artifact) / io.model_file), sess_options=opts,
                                providers=providers or ["CPUExecutionProvider"])


def fixed_feeds(io: DecoderIO, seq: int, past: int, seed: int = 0) -> dict[str, Any]:
    """One sequence of ``seq`` tokens after ``past`` cached positions, as OrtValues created once."""
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    dtype = np.dtype(io.dtype)
    arrays: dict[str, np.ndarray] = {
        "input_ids": rng.integers(1, io.vocab_size, (1, seq), dtype=np.int64),
        "attention_mask": np.ones((1, past + seq), np.int64),
        "position_ids": np.arange(past, past + seq, dtype=np.int64)[None, :],
    }
    for i in io.attention_layers:
        for name in (f"past_key_values.{i}.key", f"past_key_values.{i}.value"):
            arrays[name] = rng.standard_normal((1, io.kv_heads[i], past, io.head_dim)).astype(dtype)
    return {k: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}


def time_runs(session: Any, feeds: dict[str, Any], runs: int, warmup: int) -> list[float]:
    """perf_test's loop: ``warmup`` untimed runs, then the seconds of each of ``runs`` timed ones."""
    outputs = [o.name for o in session.get_outputs()]  # perf_test fetches every output
    for _ in range(warmup):
        session.run_with_ort_values(outputs, feeds)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run_with_ort_values(outputs, feeds)
        times.append(time.perf_counter() - t0)
    return times


def decode_past_lengths(prompt_tokens: int, new_tokens: int) -> tuple[int, ...]:
    """Past lengths of the first, middle and last decode step after a prompt (their mean is the decode's)."""
    first, last = prompt_tokens, prompt_tokens + max(new_tokens - 2, 0)
    return tuple(sorted({first, (first + last) // 2, last}))


def perf_test_latency(session: Any, io: DecoderIO, prompt_tokens: int, new_tokens: int,
                      runs: int = 5, warmup: int = 2, decode_runs: int | None = None) -> PerfFigures:
    """Mean prefill seconds (prompt, empty past) and mean decode-step seconds over the decode's past lengths.

    Decode cost grows linearly with the past length, so averaging the first, middle and last
    step's lengths gives the mean step time of a ``new_tokens`` greedy decode. ``decode_runs``
    (default ``runs``) timed steps are run at each of those lengths.
    """
    prefill = time_runs(session, fixed_feeds(io, prompt_tokens, 0), runs, warmup)
    lengths = decode_past_lengths(prompt_tokens, new_tokens)
    per_length = decode_runs or runs
    steps = [t for past in lengths for t in time_runs(session, fixed_feeds(io, 1, past), per_length, warmup)]
    return PerfFigures(float(np.mean(prefill)), float(np.mean(steps)), prompt_tokens, lengths)


@dataclass
class Crosscheck:
    """Interleaved samples of ``runtime.latency()`` and of :func:`perf_test_latency` on the same graph."""

    runtime_prefill_s: list[float]
    runtime_decode_tok_s: list[float]
    perf_prefill_s: list[float]
    perf_decode_tok_s: list[float]

    def ratios(self) -> dict[str, float]:
        """Median over rounds of runtime / perf-test per round, for prefill seconds and decode tokens/s.

        Each A B B A round gives two samples per side; a ratio within the round is paired in time,
        so a machine that slows down for a while moves both sides, not the ratio.
        """
        def paired(a: list[float], b: list[float]) -> float:
            rounds = min(len(a), len(b)) // 2
            if rounds == 0:
                return float(np.median(a) / np.median(b))
            return float(np.median([np.mean(a[2 * r:2 * r + 2]) / np.mean(b[2 * r:2 * r + 2])
                                    for r in range(rounds)]))

        return {"prefill_s": paired(self.runtime_prefill_s, self.perf_prefill_s),
                "decode_tok_s": paired(self.runtime_decode_tok_s, self.perf_decode_tok_s)}

    def summary(self) -> dict[str, Any]:
        """Medians, spreads (min-max) and ratios, for logs and reports."""
        def stats(xs: list[float]) -> dict[str, float]:
            return {"median": float(np.median(xs)), "min": float(min(xs)), "max": float(max(xs)), "n": len(xs)}

        return {"runtime_prefill_s": stats(self.runtime_prefill_s),
                "runtime_decode_tok_s": stats(self.runtime_decode_tok_s),
                "perf_prefill_s": stats(self.perf_prefill_s), "perf_decode_tok_s": stats(self.perf_decode_tok_s),
                "ratio": self.ratios()}


def crosscheck(runtime: Any, session: Any, io: DecoderIO, prompt_tokens: int, new_tokens: int,
               rounds: int = 3, perf_runs: int = 3, companion: Any = None, settle_s: float = 0.3) -> Crosscheck:
    """Time ``runtime.latency()`` (A) and the perf-test reference (B) in A B B A rounds, after one warm-up of each.

    With a ``companion`` runtime, every A sample comes right after an untimed ``companion.latency()``
    call, as verify times the original and the compressed model back to back; what one runtime
    leaves running after its call then shows in the other's figures. Each B phase starts after
    ``settle_s`` seconds of quiet, like a separate perf_test run, and its own warm-up.
    """
    def timed_runtime() -> None:
        if companion is not None:
            companion.latency(prompt_tokens, new_tokens, repeats=1, warmup=0)
        s = runtime.latency(prompt_tokens, new_tokens, repeats=1, warmup=0)
        out.runtime_prefill_s.extend(s.prefill_s)
        out.runtime_decode_tok_s.extend(s.decode_tok_s)

    def timed_reference() -> None:
        time.sleep(settle_s)
        # About as many decode steps as one latency() repeat, spread over three past lengths.
        f = perf_test_latency(session, io, prompt_tokens, new_tokens, runs=perf_runs, warmup=1,
                              decode_runs=max(1, (new_tokens - 1) // 3))
        out.perf_prefill_s.append(f.prefill_s)
        out.perf_decode_tok_s.append(f.decode_tok_s)

    out = Crosscheck([], [], [], [])
    for rt in (runtime, companion):
        if rt is not None:
            rt.latency(prompt_tokens, new_tokens, repeats=1, warmup=0)
    perf_test_latency(session, io, prompt_tokens, new_tokens, runs=1, warmup=1)
    for _ in range(rounds):
        for step in (timed_runtime, timed_reference, timed_reference, timed_runtime):
            step()
    return out


def main(argv: list[str] | None = None) -> int:
    """Cross-check ``OnnxRuntime.latency()`` against the perf-test timing on one artifact; print JSON."""
    from compressor_exporters.onnx.runtime import OnnxRuntime

    ap = argparse.ArgumentParser(prog="python -m compressor_exporters.onnx.perf", description=main.__doc__)
    ap.add_argument("artifact", type=Path, help="a directory written by the onnx exporter")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5, help="A B B A rounds")
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads of every session (default: ORT's)")
    args = ap.parse_args(argv)
    io = DecoderIO.load(args.artifact)
    runtime = OnnxRuntime(args.artifact, threads=args.threads)
    companion = OnnxRuntime(args.artifact, threads=args.threads)
    try:
        result = crosscheck(runtime, perf_session(args.artifact, io, threads=args.threads), io, args.prompt_tokens,
                            args.new_tokens, rounds=args.rounds, companion=companion)
    finally:
        runtime.close()
        companion.close()
    print(json.dumps(result.summary()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
