"""What every command shares: the consoles, error handling and exit codes."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from compressor.errors import CompressorError, ExitCode, InputError, Terminated, UsageError
from compressor.resource_errors import as_resource_error

F = TypeVar("F", bound=Callable[..., Any])


def make_console(stderr: bool = False) -> Console:
    """A console that prints text literally: user paths like ``models[v2]`` or ``n:m:`` are not markup or emoji."""
    return Console(stderr=stderr, highlight=False, markup=False, emoji=False)


err_console = make_console(stderr=True)


def say(label: str, text: str, style: str = "bold red") -> None:
    """One styled label and a literal message on stderr."""
    err_console.print(Text.assemble((label, style), " ", text), soft_wrap=True)


def debugging() -> bool:
    """True when COMPRESSOR_DEBUG asks for tracebacks."""
    return os.environ.get("COMPRESSOR_DEBUG", "") not in ("", "0")


def fail(exc: CompressorError) -> typer.Exit:
    """Print a typed error (message and hint) and return the exit that carries its code."""
    say("error:", exc.render())
    return typer.Exit(int(exc.exit_code))


def stopped(signal_exc: BaseException) -> typer.Exit:
    """Print the one line for Ctrl-C or SIGTERM and return its exit (130 or 143)."""
    if isinstance(signal_exc, Terminated):
        say("terminated:", "SIGTERM received; partial outputs were removed; the input model was not touched",
            style="bold yellow")
        return typer.Exit(int(ExitCode.TERMINATED))
    say("interrupted:", "partial outputs were removed; the input model was not touched", style="bold yellow")
    return typer.Exit(int(ExitCode.INTERRUPTED))


def handle_errors(fn: F) -> F:
    """Turn typed errors into one message and a documented exit code (tracebacks only when debugging)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except (KeyboardInterrupt, Terminated) as exc:
            raise stopped(exc) from None
        except CompressorError as exc:
            _stop_quietly_if_a_peer_failed(exc)
            if debugging():
                traceback.print_exc()
            raise fail(as_resource_error(exc) or exc) from None
        except Exception as exc:
            _stop_quietly_if_a_peer_failed(exc)
            if debugging():
                traceback.print_exc()
            resource = as_resource_error(exc)
            if resource is not None:
                raise fail(resource) from None
            if isinstance(exc, OSError):
                raise fail(InputError(str(exc), hint="check the path and its permissions")) from None
            say("internal error:", f"{type(exc).__name__}: {exc}\n"
                "  hint: set COMPRESSOR_DEBUG=1 for the traceback and report it")
            raise typer.Exit(int(ExitCode.INTERNAL)) from None

    return wrapper  # type: ignore[return-value]


def _stop_quietly_if_a_peer_failed(exc: BaseException) -> None:
    """In a data-parallel run, a rank that lost a peer exits 143 silently: the failed rank says why."""
    if os.environ.get("WORLD_SIZE", "1") == "1":
        return
    from compressor.distributed import lost_peer

    if lost_peer(exc):
        raise typer.Exit(int(ExitCode.TERMINATED)) from None


_QUIET = [False]  # --quiet: no progress lines, only the verdict and errors


def log(message: str) -> None:
    """Progress line on stderr (stdout is kept for --json); a warning is also an event."""
    from compressor.events import emit

    if message.startswith("warning: "):
        emit("warning", message=message.removeprefix("warning: "))
    if not _QUIET[0]:
        err_console.print(Text.assemble((">", "dim"), " ", message), soft_wrap=True)


def quiet() -> bool:
    """True under --quiet."""
    return _QUIET[0]


@contextlib.contextmanager
def progress_lines(label: str) -> Iterator[Callable[[str], None]]:
    """Yield the callback a command gives the pipeline for its step messages, with loop progress set up.

    Long loops (:func:`compressor.progress.steps`) show a rich bar with ETA on a terminal and a line
    per tenth on a non-terminal stderr (a CI log: no control characters); under --quiet, nothing.
    """
    from compressor.progress import set_renderer

    set_renderer(None if _QUIET[0] else _bar if err_console.is_terminal else _tenths)
    try:
        yield log
    finally:
        set_renderer(None)


_LIVE: list[Any] = []  # the rich Progress on screen: a loop inside a loop adds its bar to it


@contextlib.contextmanager
def _bar(description: str, total: int) -> Iterator[Callable[[], None]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    if _LIVE:  # rich allows one live display at a time: nest as another task of the same one
        bar = _LIVE[0]
        task = bar.add_task(description, total=total)
        try:
            yield lambda: bar.advance(task)
        finally:
            bar.remove_task(task)
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=True) as bar:
        _LIVE.append(bar)
        try:
            task = bar.add_task(description, total=total)
            yield lambda: bar.advance(task)
        finally:
            _LIVE.clear()


@contextlib.contextmanager
def _tenths(description: str, total: int) -> Iterator[Callable[[], None]]:
    done, shown = [0], [0]

    def advance() -> None:
        done[0] += 1
        tenth = done[0] * 10 // total
        if tenth > shown[0] or done[0] == total:
            shown[0] = tenth
            log(f"{description}: {done[0]}/{total} ({100 * done[0] // total}%)")
    yield advance


@contextlib.contextmanager
def output_mode(quiet: bool, verbose: bool, log_json: Path | None) -> Iterator[None]:
    """Set up --quiet / --verbose / --log-json for one command.

    --verbose prints every event (steps with seconds and peak memory) and compressor's debug log;
    --log-json appends the events to a file as JSON lines.
    """
    import logging

    from compressor.events import json_lines, sink

    if quiet and verbose:
        raise UsageError("--quiet and --verbose contradict each other", hint="give one of them")

    def show(record: dict[str, Any]) -> None:
        fields = ", ".join(f"{k}={v}" for k, v in record.items() if k not in ("event", "time"))
        err_console.print(Text.assemble(("·", "dim"), f" {record['event']}: {fields}"), soft_wrap=True)

    _QUIET[0] = quiet
    logger = logging.getLogger("compressor")
    level = logger.level
    with contextlib.ExitStack() as stack:
        if verbose:
            stack.enter_context(sink(show))
            handler = logging.StreamHandler(sys.stderr)
            logger.addHandler(handler)
            logger.setLevel(logging.DEBUG)
            stack.callback(logger.removeHandler, handler)
            stack.callback(logger.setLevel, level)
        if log_json is not None:
            stack.enter_context(json_lines(log_json))
        try:
            yield
        finally:
            _QUIET[0] = False


def print_json(data: Any) -> None:
    """Machine-readable output on stdout."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()
