"""Depth pruning: ``layer_drop`` (ShortGPT Block Influence / Gromov angular distance) and ``streamline``.

Both remove whole decoder layers, so the model keeps a stock architecture (except
``streamline`` with ``replacement: ffn``). The scores come from
:mod:`compressor.layer_similarity`, the same code ``compress inspect`` uses.
"""

from __future__ import annotations

from compressor import hookimpl
from compressor.api import RegisterMethod

from .shortgpt import LayerDrop, LayerDropOptions
from .streamline import Streamline, StreamlineOptions


# the compressor.api versions this plugin works with (checked by the host when it loads it)
COMPRESSOR_API = ">=1.0,<2"


@hookimpl
def register_methods(register: RegisterMethod) -> None:
    """Register ``layer_drop`` and ``streamline``."""
    register(LayerDrop)
    register(Streamline)


__all__ = ["LayerDrop", "LayerDropOptions", "Streamline", "StreamlineOptions"]
