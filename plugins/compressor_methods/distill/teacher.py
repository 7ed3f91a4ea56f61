"""The teacher: the original model, in memory when the run fits, otherwise left in its safetensors files and run
layer by layer (each decoder layer read from disk as the forward reaches it, then dropped)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from compressor.api import ModelHandle, StageContext, UsageError, store_of, streamed_forward

from .trainable import frozen_digest

TeacherPlace = Literal["auto", "memory", "disk"]


@dataclass
class Teacher:
    """The original model and where its weights live; calling it runs a forward pass."""

    handle: ModelHandle
    where: Literal["memory", "disk"]
    resident_bytes: int  # what its weights hold in RAM at once

    def __call__(self, **inputs: Any) -> Any:
        """The model's output for ``inputs`` (streamed through its layers when it is on disk)."""
        if self.where == "memory":
            return self.handle.model(**inputs)
        with streamed_forward(self.handle.model, head=True):
            return self.handle.model(**inputs)

    def digest(self) -> str:
        """A fingerprint of the weights, to check afterwards that nothing wrote to them."""
        if self.where == "memory":
            return frozen_digest(self.handle.model)
        store = store_of(self.handle.model)
        # every tensor still maps to an input file, and no input file was written since it was opened
        files = sorted({str(p) for p in store.where.values()})
        stats = [(f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]
        return repr((sorted((k, str(v)) for k, v in store.where.items()), stats))


def _bytes(module: Any) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def weight_bytes(handle: ModelHandle) -> int:
    """Bytes of all the model's weights in their dtype (``meta`` tensors count as they would load)."""
    return _bytes(handle.model)


def streamed_bytes(handle: ModelHandle) -> int:
    """Bytes a layer-by-layer forward holds at once: the head (the embedding when tied), the final norm, one layer."""
    model = handle.model
    largest_layer = max(_bytes(layer) for layer in model.model.layers)
    return _bytes(model.get_output_embeddings()) + _bytes(model.model.norm) + largest_layer


def open_teacher(ctx: StageContext, place: TeacherPlace, fits: Callable[[int], bool]) -> Teacher:
    """The teacher ``place`` asks for; ``auto`` keeps it in memory when ``fits(its weight bytes)``, else on disk."""
    lazy = None if place == "memory" else ctx.teacher_on_disk()
    if lazy is None:
        if place == "disk":
            raise UsageError("distill's teacher: disk needs the original model as safetensors files, and it is not",
                             hint="give the model as a Hugging Face directory with *.safetensors, or use teacher: "
                                  "memory")
        handle = ctx.teacher()
        return Teacher(handle, "memory", weight_bytes(handle))
    whole = weight_bytes(lazy)
    if place == "auto" and fits(whole):
        del lazy  # loaded whole the ordinary way, exactly as a teacher that cannot stream
        handle = ctx.teacher()
        return Teacher(handle, "memory", weight_bytes(handle))
    ctx.log(f"heal: the teacher stays on disk and runs layer by layer ({whole / 2**30:.2f} GiB of weights)")
    return Teacher(lazy, "disk", streamed_bytes(lazy))
