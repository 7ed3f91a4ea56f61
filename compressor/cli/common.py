"""What every command shares: the stderr console, error handling and exit codes."""

from __future__ import annotations

import functools
import json
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from compressor.errors import CompressorError, ExitCode

err_console = Console(stderr=True, highlight=False)
F = TypeVar("F", bound=Callable[..., Any])


def debugging() -> bool:
    """True when COMPRESSOR_DEBUG asks for tracebacks."""
    return os.environ.get("COMPRESSOR_DEBUG", "") not in ("", "0")


def handle_errors(fn: F) -> F:
    """Turn typed errors into one message and a documented exit code (tracebacks only when debugging)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except CompressorError as exc:
            if debugging():
                traceback.print_exc()
            err_console.print(f"[bold red]error:[/] {exc.render()}", markup=True, soft_wrap=True)
            raise typer.Exit(int(exc.exit_code)) from None
        except KeyboardInterrupt:
            err_console.print("interrupted: partial outputs were removed; the input model was not touched")
            raise typer.Exit(int(ExitCode.INTERRUPTED)) from None
        except MemoryError:
            err_console.print("error: out of memory\n  hint: use fewer samples, a shorter sequence, or offload")
            raise typer.Exit(int(ExitCode.RESOURCE)) from None
        except OSError as exc:
            if debugging():
                traceback.print_exc()
            code = ExitCode.RESOURCE if exc.errno in (28, 122) else ExitCode.INPUT
            err_console.print(f"error: {exc}")
            raise typer.Exit(int(code)) from None
        except Exception as exc:
            if debugging():
                raise
            err_console.print(f"internal error: {type(exc).__name__}: {exc}\n"
                              "  hint: set COMPRESSOR_DEBUG=1 for the traceback and report it")
            raise typer.Exit(int(ExitCode.INTERNAL)) from None

    return wrapper  # type: ignore[return-value]


def log(message: str) -> None:
    """Progress line on stderr (stdout is kept for --json)."""
    err_console.print(f"[dim]>[/] {message}", markup=True, highlight=False, soft_wrap=True)


def print_json(data: Any) -> None:
    """Machine-readable output on stdout."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()
