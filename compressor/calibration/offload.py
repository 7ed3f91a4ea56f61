"""Keeping a model's layers off the compute device: on CPU, or on disk in safetensors files.

A model opened with :func:`open_lazy` has every parameter on the ``meta`` device; the
:class:`SafetensorsStore` attached to it reads one module at a time from the memory-mapped
safetensors files and writes compressed modules back to its work directory, so peak memory
stays near one layer plus the activations.
"""

from __future__ import annotations

import json
import struct
import tempfile
import weakref
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

    def __init__(self, files: list[Path], workdir: Path | None = None) -> None:
        self.where: dict[str, Path] = {}
        for f in files:
            for name in _header(f):
                self.where[name] = Path(f)
        self._tmp = None if workdir is not None else tempfile.TemporaryDirectory(prefix="compressor-offload-")
        self.workdir = Path(workdir) if workdir is not None else Path(self._tmp.name)  # type: ignore[union-attr]
        self.workdir.mkdir(parents=True, exist_ok=True)

    def read(self, names: list[str], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Read the named tensors (each file opened once, memory-mapped, closed after)."""
        from safetensors import safe_open

        by_file: dict[Path, list[str]] = {}
        for n in names:
            if n not in self.where:
                raise ModelLoadError(f"tensor {n!r} is not in the offloaded safetensors files",
                                     hint="the model directory looks incomplete")
            by_file.setdefault(self.where[n], []).append(n)
        out: dict[str, torch.Tensor] = {}
        for path, group in by_file.items():
            with safe_open(str(path), framework="pt", device=str(device)) as f:
                for n in group:
                    out[n] = f.get_tensor(n)
        return out

    def load_module(self, module: nn.Module, prefix: str, device: torch.device | str) -> None:
        """Give a ``meta`` module real tensors read from the store, on ``device``."""
        keys = list(module.state_dict().keys())
        tensors = self.read([f"{prefix}.{k}" for k in keys], device)
        module.load_state_dict({k: tensors[f"{prefix}.{k}"] for k in keys}, assign=True)

    def save_module(self, module: nn.Module, prefix: str) -> None:
        """Write a module's tensors to the work directory and send the module back to ``meta``."""
        from safetensors.torch import save_file

        state = {f"{prefix}.{k}": v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
        path = self.workdir / f"{prefix}.safetensors"
        save_file(state, str(path))
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
                    tensors = self.read(list(needed.values()), device)
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


def open_lazy(path: Path | str, workdir: Path | None = None) -> Any:
    """Open an HF safetensors directory without reading its weights: a handle whose tensors stay on disk."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from compressor.model import ModelHandle, ModelSource

    path = Path(path)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{path} holds no *.safetensors files", hint="offload to disk needs safetensors weights")
    config = AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(config, "dtype", None) or torch.float32)
    model.eval()
    # Non-persistent buffers (RoPE frequencies) are not in the files: rebuild them for real.
    rotary = model.model.rotary_emb
    model.model.rotary_emb = type(rotary)(config=config)
    attach_store(model, SafetensorsStore(files, workdir))
    return ModelHandle(model, None, ModelSource(str(path), str(path), "hf-dir", files=[str(f) for f in files]))
