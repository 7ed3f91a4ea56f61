"""The ``compress`` command line: build, verify, plugins, inspect, new-plugin."""

from __future__ import annotations

import typer

from compressor.cli.build_cmd import build_command
from compressor.cli.inspect_cmd import inspect_command
from compressor.cli.new_plugin_cmd import new_plugin_command
from compressor.cli.plugins_cmd import plugins_command
from compressor.cli.verify_cmd import verify_command

app = typer.Typer(name="compress", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Prune, quantize, export and verify an LLM as one release-pipeline step.")
app.command("build")(build_command)
app.command("verify")(verify_command)
app.command("plugins")(plugins_command)
app.command("inspect")(inspect_command)
app.command("new-plugin")(new_plugin_command)


def main() -> None:
    """Run the CLI with its signal handlers (the ``compress`` script is :func:`compressor.entry.main`)."""
    from compressor.entry import main as entry_main

    entry_main()
