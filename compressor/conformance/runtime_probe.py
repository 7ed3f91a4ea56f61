"""Exercise one exporter's runtime in this process for the conformance kit (``python -m`` from a check).

Reads a JSON spec, opens the artifact with the plugin's own ``open_runtime``, scores, generates,
times, closes twice, and prints one JSON line of results (the scores go to an .npz file).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np


def main(spec_path: str) -> int:
    """Run the probe described by ``spec_path``; 0 when every call returned."""
    import importlib

    from compressor.api import RuntimeSettings

    spec = json.loads(Path(spec_path).read_text())
    module, _, qualname = spec["exporter"].partition(":")  # the class itself: a fixture need not be registered
    cls: Any = importlib.import_module(module)
    for part in qualname.split("."):
        cls = getattr(cls, part)
    exporter = cls()
    options = cls.Options.model_validate(spec["options"])
    settings = RuntimeSettings(device="cpu", max_len=int(spec["max_len"]), threads=1)  # as the caller's
    rt = exporter.open_runtime(Path(spec["artifact"]), options, settings)
    try:
        scores = rt.score(np.load(spec["windows"]), 4)
        np.savez(spec["scores"], target_logprobs=scores.target_logprobs)
        tokens = rt.generate(spec["prompts"], int(spec["new_tokens"]))
        latency = asdict(rt.latency(8, 4, 2, 1))
    finally:
        rt.close()
    second = None
    try:
        rt.close()
    except Exception as exc:  # reported as a conformance failure
        second = f"{type(exc).__name__}: {exc}"
    print(json.dumps({"tokens": [[int(t) for t in row] for row in tokens], "latency": latency,
                      "second_close_error": second}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
