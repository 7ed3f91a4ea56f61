"""Keeping a model's layers off the compute device: on CPU, or on disk in safetensors files.

A model opened with :func:`open_lazy` has every parameter on the ``meta`` device; the
:class:`SafetensorsStore` attached to it reads one module at a time from the memory-mapped
safetensors files and writes compressed modules back to its work directory, so peak memory
stays near one layer plus the activations.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor.errors import ModelLoadError

_STORES: weakref.WeakKeyDictionary[nn.Module, SafetensorsStore] = weakref.WeakKeyDictionary()


def _header(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    return header


class SafetensorsStore:
    """Reads tensors by name from safetensors files; compressed modules go to ``workdir``."""

    def __init__(self, files: list[Path], workdir: Path | None = None, dtype: torch.dtype | None = None) -> None:
        self.where: dict[str, Path] = {}
        # the dtype floating-point weights are loaded in (None: as stored), as loading the model whole in it would
        self.dtype = dtype
        for f in files:
            for name in _header(f):
                self.where[name] = Path(f)
        self._tmp = None if workdir is not None else tempfile.TemporaryDirectory(prefix="compressor-offload-")
        self.workdir = Path(workdir) if workdir is not None else Path(self._tmp.name)  # type: ignore[union-attr]
        self.workdir.mkdir(parents=True, exist_ok=True)

    def read(self, names: list[str], device: torch.device | str = "cpu",
             cast: bool = False) -> dict[str, torch.Tensor]:
        """Read the named tensors (with ``cast``, floating ones in the store's dtype).

        Each tensor is read through its own short-lived memory map: the pages a map has touched
        count in the process's RSS until it is closed, so one map per layer would hold a whole layer twice.
        """
        from safetensors import safe_open

        out: dict[str, torch.Tensor] = {}
        for n in names:
            with safe_open(str(self._file_of(n)), framework="pt", device=str(device)) as f:
                tensor = f.get_tensor(n)
            out[n] = self._cast(tensor) if cast else tensor
        return out

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of one stored tensor, read without the rest (the file is closed after)."""
        from safetensors import safe_open

        with safe_open(str(self._file_of(name)), framework="pt", device="cpu") as f:
            return f.get_slice(name)[start:stop]

    def gather_rows(self, name: str, ids: torch.Tensor) -> torch.Tensor:
        """The rows ``ids`` of one stored tensor (an embedding lookup that reads only those rows)."""
        from safetensors import safe_open

        wanted = torch.unique(ids.reshape(-1).cpu())
        with safe_open(str(self._file_of(name)), framework="pt", device="cpu") as f:
            table = f.get_slice(name)
            rows = torch.cat([table[int(i):int(i) + 1] for i in wanted])
        return rows[torch.searchsorted(wanted, ids.cpu())]

    def _file_of(self, name: str) -> Path:
        if name not in self.where:
            raise ModelLoadError(f"tensor {name!r} is not in the offloaded safetensors files",
                                 hint="the model directory looks incomplete")
        return self.where[name]

    def rename_layers(self, mapping: dict[int, int]) -> None:
        """Follow a layer drop: the tensors of layer ``old`` become layer ``new``; dropped layers are forgotten."""
        renamed: dict[str, Path] = {}
        for name, path in self.where.items():
            if name.startswith("model.layers."):
                index, rest = name[len("model.layers."):].split(".", 1)
                if int(index) not in mapping:
                    continue
                name = f"{layer_prefix(mapping[int(index)])}.{rest}"
            renamed[name] = path
        self.where = renamed

    def load_module(self, module: nn.Module, prefix: str, device: torch.device | str) -> None:
        """Give a ``meta`` module real tensors read from the store, on ``device``."""
        keys = list(module.state_dict().keys())
        tensors = self.read([f"{prefix}.{k}" for k in keys], device, cast=True)
        module.load_state_dict({k: tensors[f"{prefix}.{k}"] for k in keys}, assign=True)

    def _cast(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.dtype) if self.dtype is not None and tensor.is_floating_point() else tensor

    def save_module(self, module: nn.Module, prefix: str) -> None:
        """Write a module's tensors to the work directory and send the module back to ``meta``."""
        from compressor.safetensors_stream import PendingTensor, write_streamed

        # written block by block: safetensors' save_file would first copy the whole layer into bytes
        state = {f"{prefix}.{k}": v.detach() for k, v in module.state_dict().items()}
        path = self.workdir / f"{prefix}.safetensors"
        # a new file, then a rename: the layer's tensors may be maps of the file it replaces (a second
        # stage on the same layer), and truncating a mapped file makes reading them fail (EFAULT)
        partial = path.with_name(path.name + ".partial")
        write_streamed(partial, [PendingTensor.of(n, t) for n, t in state.items()], {"format": "pt"})
        os.replace(partial, path)
        for name in state:
            self.where[name] = path
        module.to("meta")

    def materialize(self, model: nn.Module, device: torch.device | str = "cpu") -> None:
        """Load every ``meta`` parameter of ``model`` from the store (e.g. to save or evaluate it)."""
        for name, module in model.named_modules():
            own = dict(module.named_parameters(recurse=False))
            if own and any(p.is_meta for p in own.values()):
                needed = {k: f"{name}.{k}" if name else k for k in own}
                if all(v in self.where for v in needed.values()):
                    tensors = self.read(list(needed.values()), device, cast=True)
                    for k, full in needed.items():
                        setattr(module, k, nn.Parameter(tensors[full], requires_grad=False))
        if getattr(model.config, "tie_word_embeddings", False):
            model.tie_weights()


def attach_store(model: nn.Module, store: SafetensorsStore) -> None:
    """Record that ``model``'s ``meta`` tensors live in ``store``."""
    _STORES[model] = store


def store_of(model: nn.Module) -> SafetensorsStore | None:
    """Return the store of a model opened with :func:`open_lazy`, or None."""
    return _STORES.get(model)


def is_offloaded(module: nn.Module) -> bool:
    """True when some parameter of ``module`` is on the ``meta`` device (it lives in a store)."""
    return any(p.is_meta for p in module.parameters())


def return_freed_memory() -> None:
    """Make freed tensors of 1 MiB and more go back to the OS at once (glibc; elsewhere a no-op).

    A model on disk passes through RAM one layer at a time. glibc's malloc raises its mmap
    threshold as large blocks are freed, after which blocks of a few MiB come from the heap and
    stay in the process once freed: over 40 layers that kept about as much RSS again as the layers.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD: a fixed value also stops the dynamic raising
    except (OSError, AttributeError):
        pass


def layer_prefix(index: int) -> str:
    """The state-dict prefix of decoder layer ``index``."""
    return f"model.layers.{index}"


@contextmanager
def layer_in_memory(model: nn.Module, index: int, changed: bool = True) -> Iterator[nn.Module]:
    """Decoder layer ``index`` with real weights on the CPU for the block; an offloaded one goes back after.

    With ``changed`` the (possibly resized) layer is written to the store's work directory; without
    it the layer is simply dropped again. A layer already in memory is yielded as it is.
    """
    layer = model.model.layers[index]
    store = store_of(model)
    if store is None or not is_offloaded(layer):
        yield layer
        return
    store.load_module(layer, layer_prefix(index), "cpu")
    try:
        yield layer
    finally:
        if changed:
            store.save_module(layer, layer_prefix(index))
        else:
            layer.to("meta")


@contextmanager
def stored_embedding(model: nn.Module, device: torch.device | str = "cpu",
                     dtype: torch.dtype | None = None) -> Iterator[None]:
    """Make an offloaded input embedding answer lookups by reading only the rows it is asked for.

    The rows come out in ``dtype`` (default: as stored): the position embeddings the decoder derives
    from them take their dtype, so it must be the dtype the layers compute in.
    """
    embed = model.model.embed_tokens
    store = store_of(model)
    if store is None or not is_offloaded(embed):
        yield
        return

    def lookup(ids: torch.Tensor) -> torch.Tensor:
        return store.gather_rows("model.embed_tokens.weight", ids).to(device, dtype or store.dtype)

    embed.forward = lookup  # type: ignore[method-assign]
    try:
        yield
    finally:
        del embed.forward


@contextmanager
def streamed_forward(model: nn.Module, dtype: torch.dtype | None = None, head: bool = False) -> Iterator[None]:
    """Let a forward pass run through an offloaded decoder: each layer is read as it runs, then dropped.

    The layers compute in ``dtype`` (default: the store's, as the model loaded whole would), whatever
    they are stored in. With ``head`` the output head is read too, so the forward returns logits.
    """
    store = store_of(model)
    layers = model.model.layers
    if store is None or not any(is_offloaded(layer) for layer in layers):
        yield
        return
    handles = []

    def load(module: nn.Module, prefix: str) -> None:
        store.load_module(module, prefix, "cpu")
        if dtype is not None:
            module.to(dtype)

    def hook(index: int):
        def pre(module: nn.Module, *_: Any) -> None:
            if is_offloaded(module):
                load(module, layer_prefix(index))
        return pre

    def drop(module: nn.Module, *_: Any) -> None:
        module.to("meta")

    streamed = [i for i, layer in enumerate(layers) if is_offloaded(layer)]  # the others stay where they are
    for i in streamed:
        handles.append(layers[i].register_forward_pre_hook(hook(i)))
        handles.append(layers[i].register_forward_hook(drop))
    ends = {"model.norm": model.model.norm}
    tied = getattr(model.config, "tie_word_embeddings", False)
    if head:  # a tied head is the embedding matrix, which is then read whole
        ends["model.embed_tokens" if tied else "lm_head"] = model.model.embed_tokens if tied else model.lm_head
    loaded = [(prefix, module) for prefix, module in ends.items() if is_offloaded(module)]
    for prefix, module in loaded:
        load(module, prefix)
    if tied and head:
        model.tie_weights()
    try:
        with stored_embedding(model, "cpu", dtype):
            yield
    finally:
        for h in handles:
            h.remove()
        for i in streamed:  # a forward that stopped early leaves its last layer loaded
            layers[i].to("meta")
        for _, module in loaded:
            module.to("meta")
        if tied and head:
            model.tie_weights()


def open_lazy(path: Path | str, workdir: Path | None = None, dtype: torch.dtype | None = None) -> Any:
    """Open an HF safetensors directory without reading its weights: a handle whose tensors stay on disk.

    With ``dtype``, each layer read from disk is cast to it (the dtype a whole-model load would use).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from compressor.model import ModelHandle, ModelSource

    path = Path(path)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{path} holds no *.safetensors files", hint="offload to disk needs safetensors weights")
    config = AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype or getattr(config, "dtype", None) or torch.float32)
    model.eval()
    # Non-persistent buffers (RoPE frequencies) are not in the files: rebuild them for real.
    rotary = model.model.rotary_emb
    model.model.rotary_emb = type(rotary)(config=config)
    attach_store(model, SafetensorsStore(files, workdir, dtype))
    return_freed_memory()
    return ModelHandle(model, None, ModelSource(str(path), str(path), "hf-dir", files=[str(f) for f in files]))
