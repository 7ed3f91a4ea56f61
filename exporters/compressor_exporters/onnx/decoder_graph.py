"""Export an HF causal LM as one ONNX decoder graph with a KV cache, through torch.onnx (dynamo).

optimum-onnx cannot run with transformers 5, so the graph comes from our own wrapper
(:class:`FlatDecoder`) whose inputs and outputs are plain tensors named as optimum and
onnxruntime-genai name them. Per-layer KV head counts may differ: each layer's past/present
tensors get their own shape.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor.api import ExportError, ModelHandle
from compressor_exporters.onnx.io_spec import DecoderIO

# Sample sizes for tracing: all >= 2 and pairwise different, so that torch.export keeps
# batch, sequence and past lengths symbolic instead of specialising them to 0/1 or unifying them.
SAMPLE_BATCH, SAMPLE_SEQ, SAMPLE_PAST = 2, 3, 5
EXTERNAL_DATA_BYTES = 1 << 30  # protobuf caps a file at 2 GiB; go external well before that
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16}


class FlatDecoder(nn.Module):
    """Wraps an HF causal LM so that every input and output is a tensor (no Cache object)."""

    def __init__(self, model: nn.Module, kv_heads: list[int]) -> None:
        super().__init__()
        self.model = model
        self.kv_heads = list(kv_heads)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Run one step: logits for ``input_ids`` and every attention layer's grown key/value cache."""
        from transformers import DynamicCache

        ref = past[0]
        pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        flat = iter(past)
        for heads in self.kv_heads:
            if heads:
                pairs.append((next(flat), next(flat)))
            else:
                # An attention-free layer never touches the cache, but the mask builder reads the
                # past length from the cache, so give it an empty tensor with the right length.
                empty = ref.new_zeros((ref.shape[0], 0, ref.shape[2], ref.shape[3]))
                pairs.append((empty, empty))
        cache = DynamicCache(ddp_cache_data=pairs)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=cache, use_cache=True)
        present = out.past_key_values
        flat_out = [out.logits]
        for i, heads in enumerate(self.kv_heads):
            if heads:
                flat_out += [present.layers[i].keys, present.layers[i].values]
        return tuple(flat_out)


def describe_decoder(model: ModelHandle, dtype: str) -> DecoderIO:
    """Build the I/O description of ``model``'s decoder graph from its per-layer sizes."""
    specs = model.layer_specs()
    kv_heads = [s.num_kv_heads if s.num_heads else 0 for s in specs]
    if not any(kv_heads):
        raise ExportError("the model has no attention layer left, so it has no KV cache to export",
                          hint="keep at least one attention layer when pruning")
    eos = model.config.eos_token_id
    eos_ids = [int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None]
    return DecoderIO(kv_heads=kv_heads, head_dim=model.head_dim, vocab_size=int(model.config.vocab_size),
                     dtype=dtype, eos_token_ids=eos_ids)


def sample_inputs(io: DecoderIO, batch: int, seq: int, past: int, device: torch.device,
                  seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random tokens, an all-ones mask, positions after ``past`` and random past KV tensors."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, io.vocab_size, (batch, seq), generator=g)
    mask = torch.ones(batch, past + seq, dtype=torch.int64)
    positions = torch.arange(past, past + seq, dtype=torch.int64).expand(batch, seq).contiguous()
    kv = [torch.randn(batch, io.kv_heads[i], past, io.head_dim, generator=g).to(TORCH_DTYPES[io.dtype])
          for i in io.attention_layers for _ in (0, 1)]
    return tuple(t.to(device) for t in (ids, mask, positions, *kv))


def dynamic_shapes(io: DecoderIO) -> dict[str, Any]:
    """Symbolic batch, sequence, past and total lengths for torch.export."""
    from torch.export import Dim

    batch, seq, past, total = Dim("batch"), Dim("sequence"), Dim("past_sequence"), Dim("total_sequence")
    kv = tuple({0: batch, 2: past} for _ in io.past_names())
    return {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: total},
            "position_ids": {0: batch, 1: seq}, "past": kv}


def export_copy(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy of ``model``'s modules and config that shares its tensors, or holds ``dtype`` casts of its floats.

    Nothing is written to ``model``: an in-place cast and back would round its weights
    (fp32 -> fp16 -> fp32 is lossy), and switching its attention would change its config.
    """
    tensors = [*model.parameters(), *model.buffers()]
    memo: dict[int, Any] = {}
    for t in tensors:  # deepcopy takes these as already copied; tied weights stay one tensor
        if id(t) in memo:
            continue
        if t.is_floating_point() and t.dtype != dtype:
            cast = t.detach().to(dtype)
            memo[id(t)] = nn.Parameter(cast, requires_grad=False) if isinstance(t, nn.Parameter) else cast
        else:
            memo[id(t)] = t
    return copy.deepcopy(model, memo)


@contextlib.contextmanager
def export_mode(model: nn.Module, dtype: torch.dtype) -> Iterator[nn.Module]:
    """Yield :func:`export_copy` of ``model`` in ``dtype``, in eval mode with eager attention."""
    copied = export_copy(model, dtype)
    copied.config._attn_implementation = "eager"  # the plain matmul/softmax path exports without surprises
    copied.eval()
    yield copied


def trace_decoder(model: nn.Module, io: DecoderIO, optimize: bool = True) -> Any:
    """torch.onnx's program for ``model`` (already in export mode) wrapped as :class:`FlatDecoder`."""
    from compressor.api import signals_not_swallowed

    device = next(model.parameters()).device
    with signals_not_swallowed(), torch.no_grad(), _quiet_exporter():
        wrapper = FlatDecoder(model, io.kv_heads)
        args = sample_inputs(io, SAMPLE_BATCH, SAMPLE_SEQ, SAMPLE_PAST, device)
        try:
            return torch.onnx.export(wrapper, args, dynamo=True, dynamic_shapes=dynamic_shapes(io),
                                     input_names=io.input_names(), output_names=io.output_names(),
                                     optimize=optimize, verbose=False)
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as exc:
            raise ExportError(f"torch.onnx.export failed on this model: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}",
                              hint="set COMPRESSOR_DEBUG=1 for the traceback; the onnx exporter supports "
                                   "Llama-family decoders") from exc


def export_decoder(model: ModelHandle, dest: Path, dtype: str = "float32") -> DecoderIO:
    """Write ``dest/model.onnx`` (and its external data for large models); return its I/O description.

    A model whose weights are on disk is traced without them and written tensor by tensor
    (:mod:`compressor_exporters.onnx.streamed_graph`), always with external data.
    """
    from compressor.api import is_offloaded

    io = describe_decoder(model, dtype)
    hf = model.model
    if is_offloaded(hf):
        from compressor_exporters.onnx.streamed_graph import export_streamed

        export_streamed(model, Path(dest) / io.model_file, io, TORCH_DTYPES[dtype])
        return io
    weight_bytes = sum(p.numel() for p in hf.parameters()) * torch.finfo(TORCH_DTYPES[dtype]).bits // 8
    with export_mode(hf, TORCH_DTYPES[dtype]) as exported:
        program = trace_decoder(exported, io)
        # The program's initializers are views of the copy's tensors: save while it is alive.
        with _quiet_exporter():
            program.save(str(Path(dest) / io.model_file), external_data=weight_bytes > EXTERNAL_DATA_BYTES)
    return io


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence torch.onnx's progress prints and known-harmless warnings during export."""
    # torch._subclasses logs a traceback for any error inside fake-tensor tracing, which the CLI reports
    # itself (the traceback only with COMPRESSOR_DEBUG=1)
    quiet = {"torch.onnx": logging.ERROR, "torch.export": logging.ERROR, "torch._dynamo": logging.ERROR,
             "onnxscript": logging.ERROR, "torch._subclasses": logging.CRITICAL}
    loggers = [logging.getLogger(n) for n in quiet]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(quiet[lg.name])
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(_Sink()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


class _Sink:
    """A write-only stream that drops what it gets (torch.onnx prints its progress to stdout)."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass
