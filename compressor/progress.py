"""Progress of a long loop: a bar with ETA on a terminal, a line per tenth in a CI log, nothing under --quiet.

The host and plugins wrap their loops in :func:`steps`; the command line chooses how progress is shown
with :func:`set_renderer`. Without a renderer (library use), :func:`steps` only iterates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from typing import TypeVar

T = TypeVar("T")
# (description, total) -> a context manager yielding "one more step done"
Renderer = Callable[[str, int], AbstractContextManager[Callable[[], None]]]
_RENDERER: list[Renderer | None] = [None]


def set_renderer(renderer: Renderer | None) -> None:
    """Show progress with ``renderer`` from now on (None: show nothing)."""
    _RENDERER[0] = renderer


def steps(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate over ``items``, reporting each finished one as a step of ``description``."""
    renderer = _RENDERER[0]
    if total is None:
        total = len(items) if hasattr(items, "__len__") else 0  # type: ignore[arg-type]
    if renderer is None or total <= 1:
        yield from items
        return
    with renderer(description, total) as advance:
        for item in items:
            yield item
            advance()
