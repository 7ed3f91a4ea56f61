"""vLLM's per-request progress shown as the host's progress: a tqdm class for ``LLM.generate(use_tqdm=...)``."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from compressor.api import counter


@contextmanager
def requests_progress(description: str, total: int) -> Iterator[Any]:
    """Yield what to pass as ``use_tqdm``: a tqdm class that advances ``description`` once per finished request.

    vLLM builds the bar itself (``tqdm_func(total=..., desc=..., ...)``) and calls ``update(n)``; this one
    writes its own text nowhere, so only the host's bar or CI line shows.
    """
    from tqdm import tqdm

    with counter(description, total) as advance:

        class HostProgress(tqdm):  # type: ignore[misc]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                # enabled whatever TQDM_DISABLE says (the CLI sets it to quiet libraries' bars): a disabled
                # bar reports 0 s elapsed, and vLLM divides by it
                super().__init__(*args, **{**kwargs, "file": io.StringIO(), "disable": False})

            @property
            def format_dict(self) -> dict[str, Any]:
                shown = dict(super().format_dict)
                shown["elapsed"] = max(float(shown.get("elapsed") or 0.0), 1e-9)  # vLLM's rate divides by it
                return shown

            def update(self, n: float | None = 1) -> bool | None:
                for _ in range(int(n or 0)):
                    advance()
                return super().update(n)

        yield HostProgress
