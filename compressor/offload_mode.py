"""`offload`: where a build keeps the weights it is not working on, and the choice made for `auto`.

- ``none``: the whole model in RAM (or on ``device``).
- ``cpu``: the whole model in CPU RAM; layer-by-layer methods move one layer at a time to ``device``.
- ``disk``: the weights stay memory-mapped in the input's safetensors files. Methods that can work
  layer by layer read one layer, and write it back to a work directory when they change it;
  exporters that can stream write one tensor at a time. Anything else loads the whole model
  first, and is refused (exit 6) when that cannot fit.
- ``auto``: ``disk`` when the model would not fit in RAM and its weights are safetensors, else ``none``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from compressor.errors import ResourceError, UsageError
from compressor.model import ModelHandle

GIB = 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# besides the weights, a build in RAM holds activations, a method's work and the runtime libraries
FIT_HEADROOM = 1.25


@dataclass(frozen=True)
class OffloadChoice:
    """The offload mode a build uses, and why."""

    mode: str  # none, cpu or disk
    requested: str
    reason: str
    weight_bytes: int  # the model's weights loaded whole, in the recipe's dtype
    available_bytes: int | None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable view."""
        return asdict(self)


def available_ram() -> int:
    """Bytes of RAM free for this build (``COMPRESSOR_MEMORY_LIMIT`` caps it, e.g. in a container)."""
    import os

    import psutil

    free = int(psutil.virtual_memory().available)
    limit = os.environ.get("COMPRESSOR_MEMORY_LIMIT")
    if limit:
        try:
            free = min(free, parse_bytes(limit))
        except ValueError as exc:
            raise UsageError(f"COMPRESSOR_MEMORY_LIMIT={limit!r} is not a size",
                             hint="write it in bytes or with a unit, e.g. 12GiB or 500MB") from exc
    return free


def parse_bytes(text: str) -> int:
    """``'12GiB'``, ``'500MB'`` or ``'1048576'`` in bytes."""
    units = {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "kb": 10**3, "mb": 10**6, "gb": 10**9,
             "tb": 10**12, "b": 1, "": 1}
    t = text.strip().lower()
    number = t.rstrip("abgikmt")
    unit = t[len(number):]
    if unit not in units or not number:
        raise ValueError(text)
    return int(float(number) * units[unit])


def safetensors_dir(skeleton: ModelHandle) -> Path | None:
    """The model's directory when its weights are safetensors files (what ``disk`` reads), else None."""
    source = skeleton.source
    if source.kind != "hf-dir":
        return None
    path = Path(source.path)
    if not any(path.glob("*.safetensors")):
        return None
    try:
        from compressor.decilm_loading import is_decilm_config

        if is_decilm_config(json.loads((path / "config.json").read_text())):
            return None  # compressor builds DeciLM models itself; the lazy loader builds stock ones
    except (OSError, ValueError):
        return None
    return path


def choose_offload(requested: str, skeleton: ModelHandle, dtype: str) -> OffloadChoice:
    """Resolve ``requested`` (auto, none, cpu, disk) for this model; refuse ``disk`` without safetensors."""
    weights = skeleton.num_parameters() * DTYPE_BYTES[dtype]
    available = available_ram()
    need = int(weights * FIT_HEADROOM)
    fits = need <= available
    on_disk = safetensors_dir(skeleton) is not None
    if requested == "disk" and not on_disk:
        raise UsageError(f"offload: disk reads the weights from safetensors files, and {skeleton.source.ref} is a "
                         f"{skeleton.source.kind} model", hint="convert the model to a safetensors HF directory, "
                                                             "or use offload: none or cpu")
    if requested != "auto":
        return OffloadChoice(requested, requested, "asked for", weights, available)
    if fits:
        return OffloadChoice("none", "auto", f"the model fits in RAM ({need / GIB:.2f} of "
                                             f"{available / GIB:.2f} GiB free)", weights, available)
    if not on_disk:
        return OffloadChoice("none", "auto", f"the model needs about {need / GIB:.2f} GiB, more than the "
                                             f"{available / GIB:.2f} GiB free, but its weights are not "
                                             "safetensors, so they cannot stay on disk", weights, available)
    return OffloadChoice("disk", "auto", f"the model needs about {need / GIB:.2f} GiB, more than the "
                                         f"{available / GIB:.2f} GiB free", weights, available)


def whole_model_error(what: str, why: str, weight_bytes: int, extra_bytes: int = 0) -> ResourceError | None:
    """A ResourceError (exit 6) when ``what``, which needs the whole model in RAM, cannot have it; else None."""
    available = available_ram()
    need = int((weight_bytes + extra_bytes) * FIT_HEADROOM)
    if need <= available:
        return None
    return ResourceError(f"{what} needs the whole model in memory ({why}): about {need / GIB:.2f} GiB "
                         f"(weights {weight_bytes / GIB:.2f} GiB, its own work {extra_bytes / GIB:.2f} GiB, "
                         f"+{FIT_HEADROOM - 1:.0%}), but only {available / GIB:.2f} GiB is free",
                         hint="use a method that works layer by layer (layer_drop, magnitude, wanda, sparsegpt) "
                              "and an export that streams (vllm, transformers, gguf), or a machine with more RAM")


def open_offloaded(ref: str, workdir: Path, dtype: str, hash_files: bool = True) -> ModelHandle:
    """Open a safetensors HF directory with its weights left on disk (read in ``dtype``), with its tokenizer."""
    import torch
    from transformers import AutoTokenizer

    from compressor.calibration.offload import open_lazy
    from compressor.errors import ModelLoadError
    from compressor.model_loading import _check_architecture, _hash_files, resolve_model

    source = resolve_model(ref)
    path = Path(source.path)
    _check_architecture(json.loads((path / "config.json").read_text()), ref)
    try:
        handle = open_lazy(path, workdir=workdir, dtype=getattr(torch, dtype))
        handle.tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (ModelLoadError, KeyboardInterrupt):
        raise
    except Exception as exc:
        raise ModelLoadError(f"could not open model {ref} with its weights on disk: {type(exc).__name__}: {exc}",
                             hint="check that the files are complete and not corrupt") from exc
    handle.source = source
    if hash_files:
        source.sha256 = _hash_files([Path(f) for f in source.files])
    return handle
