"""``compress inspect``: where is a model redundant? Per-layer scores, a table, JSON and a plot."""

from __future__ import annotations

from pathlib import Path

import typer

from compressor.cli.common import handle_errors, log, make_console, print_json
from compressor.recipe import DataSpec


@handle_errors
def inspect_command(
    model: str = typer.Argument("smollm2-135m", help="HF directory, .gguf file or 'smollm2-135m'."),
    count: int = typer.Option(4, "--count", "-n", min=1, help="How many layers each method would drop."),
    out: Path = typer.Option(Path("inspect-out"), "--out", "-o", help="Where inspect.json and inspect.png go."),
    calib: str = typer.Option("shakespeare", "--calib", help="Calibration data (same options as build)."),
    calib_samples: int | None = typer.Option(16, "--calib-samples"),
    calib_seq_len: int | None = typer.Option(256, "--calib-seq-len"),
    all_tokens: bool = typer.Option(False, "--all-tokens", help="Angular distance over all tokens, not the last."),
    seed: int = typer.Option(0, "--seed"),
    allow_pickle: bool = typer.Option(False, "--allow-pickle"),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code"),
    as_json: bool = typer.Option(False, "--json", help="Print inspect.json on stdout."),
) -> None:
    """Print per-layer Block Influence, angular distance and cosine similarity, and plot them."""
    from compressor.data import check_vocab, load_windows
    from compressor.inspect_report import render_inspect_table, run_inspect
    from compressor.model_loading import load_model

    from compressor.atomic import check_no_overlap
    from compressor.model_loading import resolve_model

    spec = DataSpec(source=calib, samples=calib_samples, seq_len=calib_seq_len)
    source = resolve_model(model, allow_pickle)
    inputs = [Path(source.path)] if source.kind != "hub" else []
    if calib != "shakespeare" and Path(calib).expanduser().exists():
        inputs.append(Path(calib).expanduser())
    check_no_overlap(out, inputs)  # inspect writes into --out: never into the model's own folder
    log(f"loading {model}")
    handle = load_model(model, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    windows = load_windows(spec.source, "calibration", handle.tokenizer, spec.samples, spec.seq_len, seed)
    check_vocab(windows, int(handle.config.vocab_size), "calibration")
    log(f"scoring {handle.num_layers} layers on {windows.shape[0]} windows of {windows.shape[1]} tokens")
    data = run_inspect(handle, windows, count, out, all_tokens=all_tokens)
    if as_json:
        print_json(data)
    else:
        make_console().print(render_inspect_table(data))
        print(f"wrote {out / 'inspect.json'} and {out / 'inspect.png'}")
