"""``compress plugins``: every plugin distribution, its version, what it registers, load failures."""

from __future__ import annotations

import typer
from rich.table import Table
from rich.text import Text

from compressor.api import API_VERSION, describe_options
from compressor.cli.common import handle_errors, make_console, print_json
from compressor.plugin_manager import load_registry


@handle_errors
def plugins_command(
    as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout."),
    options: bool = typer.Option(False, "--options", help="Also list each method's, exporter's and evaluator's options."),
) -> None:
    """List installed plugins (built-in ones too) with versions, registrations and load failures."""
    registry = load_registry()
    data = {
        "api_version": API_VERSION,
        "plugins": [p.to_dict() for p in registry.plugins],
        "methods": {n: {"plugin": registry.owners[f"method:{n}"], "stage": c.stage, "summary": c.summary,
                        "options": describe_options(c.Options)} for n, c in sorted(registry.methods.items())},
        "exporters": {n: {"plugin": registry.owners[f"exporter:{n}"], "runtime": c.runtime_name, "summary": c.summary,
                          "options": describe_options(c.Options)} for n, c in sorted(registry.exporters.items())},
        "evaluators": {n: {"plugin": registry.owners[f"evaluator:{n}"], "summary": c.summary,
                           "options": describe_options(c.Options)} for n, c in sorted(registry.evaluators.items())},
    }
    if as_json:
        print_json(data)
        return
    table = Table(title="compressor plugins")
    for col in ("plugin", "distribution", "version", "api", "methods", "exporters", "evaluators", "status"):
        table.add_column(col)
    for p in registry.plugins:
        status = "blocked" if p.blocked else (Text(f"failed: {p.error}", style="red") if p.error else "ok")
        table.add_row(p.name, p.dist, p.version, p.api or "-", ", ".join(p.methods), ", ".join(p.exporters),
                      ", ".join(p.evaluators), status)
    table.caption = f"compressor plugin API {API_VERSION}"
    console = make_console()
    console.print(table)
    if options:
        for kind in ("methods", "exporters", "evaluators"):
            for name, info in data[kind].items():
                console.print(Text.assemble("\n", (f"{kind[:-1]} {name}", "bold"), f": {info['summary']}"))
                for o in info["options"]:
                    console.print(f"  {o['name']} ({o['type']}, default {o['default']!r}): {o['description']}",
                                  soft_wrap=True)
