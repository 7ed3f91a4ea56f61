"""The decoder graph of a model whose weights are on disk (offload: disk), written without loading them all.

torch.onnx traces a copy whose parameters are uninitialised CPU tensors: address space whose pages
are never touched, so tracing costs no memory and gives the graph, lifted constants and initializer
names of an in-memory export. Each weight initializer is then swapped for an onnx_ir ``LazyTensor``
that reads the weight from the store when the file is written. torch.onnx's optimizer would fold the
Transpose in front of each linear by reading the weight; that fold is done here as a lazy transposed
read, and the optimizer then runs with folding off for lazy inputs. onnx_ir writes the external data
with a bounded number of bytes in flight.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compressor.api import ModelHandle, counter, store_of
from compressor_exporters.onnx.io_spec import DecoderIO

WRITE_IN_FLIGHT_BYTES = 256 * 2**20  # tensors read and not yet written, at most


def placeholder_copy(model: nn.Module, dtype: torch.dtype) -> tuple[nn.Module, dict[int, str]]:
    """A copy of an offloaded ``model`` whose stored tensors are uninitialised ``dtype`` tensors.

    Returns the copy and, for each placeholder (by ``id``), the name it is stored under.
    """
    store = store_of(model)
    assert store is not None, "placeholder_copy needs a model opened with open_lazy"
    stored_name: dict[int, str] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if t.is_meta and (id(t) not in stored_name or name in store.where):  # a tied tensor: its stored name
            stored_name[id(t)] = name
    memo: dict[int, Any] = {}
    sources: dict[int, str] = {}
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) in memo or not t.is_meta:
            continue
        # torch.empty only reserves address space: the pages are never written, so never resident
        empty = torch.empty(t.shape, dtype=dtype if t.is_floating_point() else t.dtype)
        memo[id(t)] = nn.Parameter(empty, requires_grad=False) if isinstance(t, nn.Parameter) else empty
        sources[id(memo[id(t)])] = stored_name[id(t)]
    copied = copy.deepcopy(model, memo)
    copied.config._attn_implementation = "eager"  # as the in-memory export traces it
    copied.eval()
    return copied, sources


def read_lazily(ir_model: Any, sources: dict[int, str], model: nn.Module, dtype: torch.dtype,
                on_read: Callable[[], None] = lambda: None) -> set[str]:
    """Swap every placeholder initializer of ``ir_model`` for a lazy read from the store (``on_read`` after each
    read); return their names."""
    import onnx_ir as ir

    store = store_of(model)
    assert store is not None
    lazy: set[str] = set()
    for name, value in ir_model.graph.initializers.items():
        raw = getattr(value.const_value, "raw", None)
        if not isinstance(raw, torch.Tensor) or id(raw) not in sources:
            continue
        key = sources[id(raw)]

        def read(key: str = key) -> Any:
            tensor = store.read([key], cast=True)[key]
            on_read()
            return ir.tensor(tensor.to(dtype).numpy() if tensor.is_floating_point() else tensor.numpy())
        value.const_value = ir.LazyTensor(read, value.const_value.dtype, value.const_value.shape, name=name)
        lazy.add(name)
    return lazy


def fold_weight_transposes(graph: Any, lazy: set[str]) -> int:
    """Replace each Transpose whose only input is a lazy weight used nowhere else by a lazy transposed read.

    The new initializer takes the Transpose's output name, as torch.onnx's constant folding names it.
    """
    import onnx_ir as ir

    folded = 0
    for node in list(graph):
        src = node.inputs[0] if node.op_type == "Transpose" and node.domain == "" and node.inputs else None
        if src is None or src.name not in lazy or len(src.uses()) != 1:
            continue
        perm = list(node.attributes.get_ints("perm"))
        source = src.const_value
        shape = ir.Shape([source.shape[p] for p in perm])

        def read(source: Any = source, perm: list[int] = perm) -> Any:
            return ir.tensor(np.ascontiguousarray(source.numpy().transpose(perm)))
        out = node.outputs[0]
        folded_value = ir.Value(name=out.name, shape=shape, type=src.type,
                                const_value=ir.LazyTensor(read, source.dtype, shape, name=out.name))
        out.replace_all_uses_with(folded_value)
        graph.remove(node, safe=True)
        del graph.initializers[src.name]
        graph.register_initializer(folded_value)
        lazy.add(out.name)
        folded += 1
    return folded


def optimize_without_reading(ir_model: Any, lazy: set[str]) -> None:
    """torch.onnx's optimisation (onnxscript's optimizer and fusions), never folding a node over a lazy weight."""
    import onnxscript.optimizer
    import onnxscript.rewriter.onnx_fusions

    def should_fold(node: Any) -> bool | None:
        return False if any(x is not None and x.name in lazy for x in node.inputs) else None

    onnxscript.optimizer.optimize_ir(ir_model, should_fold=should_fold)
    onnxscript.rewriter.onnx_fusions.fuse(ir_model)


def export_streamed(model: ModelHandle, path: Path, io: DecoderIO, dtype: torch.dtype) -> None:
    """Write ``path`` (with its external data ``<name>.data``) for a model whose weights are on disk."""
    import onnx_ir as ir

    from compressor_exporters.onnx.decoder_graph import trace_decoder

    copied, sources = placeholder_copy(model.model, dtype)
    program = trace_decoder(copied, io, optimize=False)
    advance: list[Callable[[], None]] = [lambda: None]  # set once the number of weights is known
    lazy = read_lazily(program.model, sources, model.model, dtype, on_read=lambda: advance[0]())
    fold_weight_transposes(program.model.graph, lazy)
    optimize_without_reading(program.model, lazy)
    # what is left to write after deduplication and folding: each is read from disk once, as it is written
    to_write = sum(isinstance(v.const_value, ir.LazyTensor) for v in program.model.graph.initializers.values())
    with counter("onnx: weights read from disk and written", to_write) as step:
        done = [0]

        def one_more() -> None:
            if done[0] < to_write:  # never past the end, whatever the writer reads
                done[0] += 1
                step()
        advance[0] = one_more
        ir.save(program.model, str(path), external_data=path.name + ".data", max_workers=1,
                max_in_flight_bytes=WRITE_IN_FLIGHT_BYTES)
