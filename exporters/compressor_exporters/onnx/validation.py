"""Export-time checks: ONNX Runtime logits against PyTorch's (or a quantized graph against the fp32 one).

Two steps are checked on a batch of 2 random prompts: a prefill from an empty cache, then a
decode step that feeds the prefill's present tensors back as the past. The decode step's
PyTorch reference is a cache-free forward over the whole sequence, so a wrongly wired cache fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compressor.api import ModelHandle, ValidationMismatchError, is_offloaded, streamed_forward
from compressor_exporters.onnx.decoder_graph import export_mode
from compressor_exporters.onnx.io_spec import DecoderIO
from compressor_exporters.onnx.session import DecoderSession

# Largest allowed |ONNX - PyTorch| on any logit, per export dtype; the reference is always the
# model in float32. fp32 graphs reorder float sums (fusions, different matmul kernels), which
# moves SmolLM2's logits by ~1e-4 after 30 layers; 1e-3 leaves headroom and still catches any
# wrong weight, mask or cache (those move logits by >1e-1). float16 rounds every activation to
# 11 bits, so its bound is loose and relative to the logit range.
ATOL = {"float32": 1e-3, "float16": 5e-2}
FP16_RTOL_OF_RANGE = 5e-3

# A quantized graph is compared with the fp32 ONNX graph it came from. Quantization moves
# logits by far more than float error, so the check is the mean cosine similarity of the logit
# vectors: a broken graph (wrong weights, scales or wiring) scores near 0, while on SmolLM2
# int8 dynamic scores 0.996 and int4 ~0.99. Top-1 agreement is reported but not required: on
# the random-token probe the top logits are near-ties (SmolLM2 int8: 0.39 with cosine 0.996).
# Quantization quality (perplexity) is the verify stage's job, not the export's.
QUANT_MIN_COSINE = {"int8": 0.95, "int4": 0.90}

PROMPT_BATCH, PROMPT_LEN = 2, 8


@dataclass
class Probe:
    """The validation tokens: prompts [B, L] and one decode token per row."""

    prompts: np.ndarray
    next_tokens: np.ndarray

    @property
    def full(self) -> np.ndarray:
        """Prompts followed by their decode token, [B, L+1]."""
        return np.concatenate([self.prompts, self.next_tokens], axis=1)


def make_probe(vocab: int, seed: int = 0) -> Probe:
    """Deterministic random prompts and decode tokens."""
    rng = np.random.default_rng(seed)
    full = rng.integers(0, vocab, size=(PROMPT_BATCH, PROMPT_LEN + 1), dtype=np.int64)
    return Probe(full[:, :PROMPT_LEN], full[:, PROMPT_LEN:])


def onnx_steps(session: DecoderSession, probe: Probe) -> dict[str, np.ndarray]:
    """ONNX logits of the prefill ([B, L, V]) and of the cached decode step ([B, 1, V])."""
    prefill, cache = session.logits(probe.prompts)
    decode, _ = session.logits(probe.next_tokens, cache, past_len=probe.prompts.shape[1])
    return {"prefill": prefill, "decode": decode}


def _steps_at(artifact: str, io: DecoderIO, probe: Probe) -> dict[str, np.ndarray]:
    return onnx_steps(DecoderSession(Path(artifact), io), probe)


class SessionInChildProcess:
    """The graph opened by ONNX Runtime in a child process, so that this one never holds its weights."""

    def __init__(self, artifact: Path, io: DecoderIO) -> None:
        self.artifact, self.io = artifact, io

    def steps(self, probe: Probe) -> dict[str, np.ndarray]:
        """:func:`onnx_steps` run in a fresh process (spawned: a fork would copy this one's state)."""
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            return pool.submit(_steps_at, str(self.artifact), self.io, probe).result()


@torch.no_grad()
def torch_steps(model: ModelHandle, probe: Probe) -> dict[str, np.ndarray]:
    """PyTorch float32 logits for the same steps, from one cache-free forward over the full sequence.

    A model whose weights are on disk runs layer by layer from the store, each layer cast to float32.
    """
    hf = model.model
    ids = torch.from_numpy(probe.full)
    if is_offloaded(hf):
        with streamed_forward(hf, torch.float32, head=True):
            logits = hf(ids, use_cache=False).logits.float().numpy()
    else:
        device = next(hf.parameters()).device
        with export_mode(hf, torch.float32) as reference:  # a float32 copy: the live model is never cast
            logits = reference(ids.to(device), use_cache=False).logits.float().cpu().numpy()
    split = probe.prompts.shape[1]
    return {"prefill": logits[:, :split], "decode": logits[:, split:]}


def largest_difference(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> dict[str, Any]:
    """Where |got - want| is largest over every step: step, row, position, token and both values."""
    best: dict[str, Any] = {"max_abs_diff": -1.0}
    for step in want:
        diff = np.abs(got[step].astype(np.float64) - want[step].astype(np.float64))
        if not np.isfinite(diff).all():
            row, pos, tok = np.argwhere(~np.isfinite(diff))[0]
            return {"max_abs_diff": float("inf"), "step": step, "row": int(row), "position": int(pos),
                    "token": int(tok), "onnx_value": float(got[step][row, pos, tok]),
                    "reference_value": float(want[step][row, pos, tok])}
        row, pos, tok = np.unravel_index(int(diff.argmax()), diff.shape)
        if diff[row, pos, tok] > best["max_abs_diff"]:
            best = {"max_abs_diff": float(diff[row, pos, tok]), "step": step, "row": int(row),
                    "position": int(pos), "token": int(tok), "onnx_value": float(got[step][row, pos, tok]),
                    "reference_value": float(want[step][row, pos, tok])}
    return best


def tolerance(dtype: str, reference: dict[str, np.ndarray], atol: float | None) -> float:
    """The absolute bound for this dtype (an explicit ``atol`` wins)."""
    if atol is not None:
        return float(atol)
    if dtype == "float16":
        span = max(float(np.ptp(v)) for v in reference.values())
        return max(ATOL["float16"], FP16_RTOL_OF_RANGE * span)
    return ATOL[dtype]


def validate_against_torch(model: ModelHandle, session: DecoderSession | SessionInChildProcess, dtype: str,
                           atol: float | None = None) -> dict[str, Any]:
    """Raise :class:`ValidationMismatchError` if ONNX Runtime's logits differ from PyTorch's beyond tolerance."""
    probe = make_probe(session.io.vocab_size)
    want = torch_steps(model, probe)
    got = session.steps(probe) if isinstance(session, SessionInChildProcess) else onnx_steps(session, probe)
    worst = largest_difference(got, want)
    bound = tolerance(dtype, want, atol)
    top1 = float(np.mean([(got[s].argmax(-1) == want[s].argmax(-1)).mean() for s in want]))
    result = {"reference": "pytorch float32", "steps": ["prefill", "decode"], "batch": PROMPT_BATCH,
              "prompt_tokens": PROMPT_LEN, "atol": bound, "top1_agreement": top1, **worst}
    if not worst["max_abs_diff"] <= bound:  # also true for NaN
        raise ValidationMismatchError(
            f"ONNX Runtime logits differ from PyTorch by {worst['max_abs_diff']:.3g} (> atol {bound:.3g}) "
            f"in the {worst['step']} step at batch row {worst['row']}, position {worst['position']}, "
            f"token {worst['token']}: onnx {worst['onnx_value']:.6g} vs pytorch {worst['reference_value']:.6g}",
            hint="the export is wrong for this model; set COMPRESSOR_DEBUG=1 and report it, or raise the "
                 "exporter's `atol` option if the difference is expected")
    return result


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching logit vectors (last axis)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    num = (a64 * b64).sum(-1)
    den = np.linalg.norm(a64, axis=-1) * np.linalg.norm(b64, axis=-1)
    return num / np.maximum(den, 1e-30)


def validate_quantized(quantized: DecoderSession, reference: DecoderSession, scheme: str,
                       min_cosine: float | None = None) -> dict[str, Any]:
    """Raise :class:`ValidationMismatchError` if a quantized graph disagrees with its fp32 graph."""
    probe = make_probe(reference.io.vocab_size)
    want = onnx_steps(reference, probe)
    got = onnx_steps(quantized, probe)
    cos = np.concatenate([cosine_rows(got[s], want[s]).ravel() for s in want])
    top1 = float(np.mean(np.concatenate([(got[s].argmax(-1) == want[s].argmax(-1)).ravel() for s in want])))
    bound = QUANT_MIN_COSINE[scheme] if min_cosine is None else float(min_cosine)
    worst = largest_difference(got, want)
    result = {"reference": "onnx float32 graph", "mean_cosine": float(np.mean(cos)),
              "min_cosine": float(np.min(cos)), "top1_agreement": top1, "min_cosine_required": bound,
              "max_abs_diff": worst["max_abs_diff"]}
    if not (np.isfinite(cos).all() and result["mean_cosine"] >= bound):
        raise ValidationMismatchError(
            f"the {scheme} ONNX graph disagrees with the float32 graph: mean logit cosine "
            f"{result['mean_cosine']:.4f} (need >= {bound}, top-1 agreement {top1:.2f}); largest difference "
            f"{worst['max_abs_diff']:.3g} in the {worst['step']} step at row {worst['row']}, position "
            f"{worst['position']}, token {worst['token']}",
            hint="use a finer scheme (int4_block_size 32, per_channel int8) or quantize: none")
    return result
