"""``compress new-plugin``: write a plugin package that installs, passes the conformance kit and builds."""

from __future__ import annotations

from pathlib import Path

import typer

from compressor.cli.common import handle_errors, log


@handle_errors
def new_plugin_command(
    name: str = typer.Argument(..., help="The plugin's name: the entry point, the method or export format."),
    kind: str = typer.Option(..., "--kind", help="method, exporter or evaluator."),
    directory: Path = typer.Option(Path("."), "--dir", help="Where the package directory compressor-NAME goes."),
) -> None:
    """Write compressor-NAME/: pyproject.toml (entry point, API range), the module, a README and kit tests."""
    from compressor.scaffold import new_plugin

    target = new_plugin(name, kind, directory)  # type: ignore[arg-type]
    log(f"wrote {target}: pip install -e {target}, then pytest {target} runs the conformance kit on it")
