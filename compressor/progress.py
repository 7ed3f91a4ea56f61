"""Progress of a long loop: a bar with ETA on a terminal, a line per tenth in a CI log, nothing under --quiet.

The host and plugins wrap their loops in :func:`steps`; the command line chooses how progress is shown
with :func:`set_renderer`. Without a renderer (library use), :func:`steps` only iterates. A runtime's
worker process sends its loops' steps over its reply pipe (:func:`sending_renderer`), and the host shows
them with its own renderer (:class:`ProgressRelay`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TypeVar

T = TypeVar("T")
# (description, total) -> a context manager yielding "one more step done"
Renderer = Callable[[str, int], AbstractContextManager[Callable[[], None]]]
_RENDERER: list[Renderer | None] = [None]


def set_renderer(renderer: Renderer | None) -> None:
    """Show progress with ``renderer`` from now on (None: show nothing)."""
    _RENDERER[0] = renderer


def steps(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate over ``items``, reporting each finished one as a step of ``description``."""
    if total is None:
        total = len(items) if hasattr(items, "__len__") else 0  # type: ignore[arg-type]
    with counter(description, total) as advance:
        for item in items:
            yield item
            advance()


def active() -> bool:
    """True when progress is being shown (a renderer is set)."""
    return _RENDERER[0] is not None


@contextmanager
def counter(description: str, total: int) -> Iterator[Callable[[], None]]:
    """Progress of work that is not a loop here (e.g. a library's callbacks): call what it yields once per step."""
    renderer = _RENDERER[0]
    if renderer is None or total <= 1:
        yield lambda: None
        return
    with renderer(description, total) as advance:
        yield advance


def sending_renderer(send: Callable[[dict[str, Any]], None]) -> Renderer:
    """A renderer that sends each loop's start and steps as messages (a worker process reporting to the host)."""

    @contextmanager
    def render(description: str, total: int) -> Iterator[Callable[[], None]]:
        done = [0]
        send({"description": description, "total": total, "done": 0})

        def advance() -> None:
            done[0] += 1
            send({"description": description, "total": total, "done": done[0]})

        yield advance

    return render


class ProgressRelay:
    """Shows, through this process's renderer, the loop messages a :func:`sending_renderer` sent from another."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self._open: dict[str, tuple[AbstractContextManager[Callable[[], None]], Callable[[], None], list[int]]] = {}

    def show(self, message: dict[str, Any]) -> None:
        """Advance (opening or closing as needed) the bar of the loop ``message`` reports on."""
        renderer = _RENDERER[0]
        description, total, done = str(message["description"]), int(message["total"]), int(message["done"])
        if renderer is None or total <= 1:
            return
        if description not in self._open or done == 0:
            self._finish(description)
            bar = renderer(f"{self.prefix}{description}", total)
            self._open[description] = (bar, bar.__enter__(), [0])
        _, advance, seen = self._open[description]
        while seen[0] < done:
            advance()
            seen[0] += 1
        if done >= total:
            self._finish(description)

    def _finish(self, description: str) -> None:
        entry = self._open.pop(description, None)
        if entry is not None:
            entry[0].__exit__(None, None, None)

    def close(self) -> None:
        """End every bar still open (the other process stopped mid-loop)."""
        for description in list(self._open):
            self._finish(description)
