"""Parameters per decoder layer, before and after compression, for the report's per-layer plot."""

from __future__ import annotations

from typing import Any

from compressor.layer_similarity import layer_parameters
from compressor.model import ModelHandle


def parameter_census(model: ModelHandle) -> list[dict[str, Any]]:
    """Each decoder layer's original index, parameter count and non-zero count (None when on disk).

    Counting non-zeros reads every weight, so a model whose weights live on disk (offload) gets
    shapes only: its layers pass through memory one at a time and are not read again for a plot.
    """
    from compressor.calibration import is_offloaded

    rows = []
    for index, (origin, layer) in enumerate(zip(model.original_layer_indices(), model.layers)):
        nonzero = None if is_offloaded(layer) else int(sum(int(p.count_nonzero()) for p in layer.parameters()))
        rows.append({"index": index, "original_index": origin, "parameters": layer_parameters(model, index),
                     "nonzero": nonzero})
    return rows
