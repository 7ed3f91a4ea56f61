"""report.json, report.md and the verdict table printed at the end of a build or verify."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.table import Table

ROWS = [  # (label, metric key, format)
    ("perplexity", "perplexity", "{:.2f}"),
    ("perplexity (original)", "perplexity_original", "{:.2f}"),
    ("perplexity change", "ppl_increase_pct", "{:+.2f}%"),
    ("top-1 agreement", "top1_agreement", "{:.3f}"),
    ("KL (top-k estimate)", "kl", "{:.4f}"),
    ("greedy prefix match", "greedy_prefix_match", "{:.3f}"),
    ("decode speed-up", "decode_speedup", "{:.2f}x"),
    ("prefill speed-up", "prefill_speedup", "{:.2f}x"),
    ("size ratio", "size_ratio", "{:.3f}"),
]
STATUS_TEXT = {"pass": "PASS", "fail": "FAIL", "inconclusive": "INCONCLUSIVE", "error": "ERROR"}


def _fmt(fmt: str, value: Any) -> str:
    return "-" if value is None else fmt.format(value)


def _interval(m: dict[str, Any], key: str) -> str:
    ci = m.get(f"{key}_ci")
    if not ci:
        return ""
    return f" [{ci[0]:.2f}, {ci[1]:.2f}]"


def _metric_cell(m: dict[str, Any], key: str, fmt: str) -> str:
    text = _fmt(fmt, m.get(key))
    return text + _interval(m, key) if key in ("decode_speedup", "prefill_speedup") and m.get(key) is not None else text


def timing_rounds(m: dict[str, Any]) -> str:
    """How many timing rounds ran, and how many were left out because the machine was busy."""
    busy = m.get("busy_rounds") or []
    left_out = f" ({len(busy)} left out: the machine was busy)" if busy else ""
    return f"{m.get('timing_rounds', m.get('speedup_rounds'))}{left_out}"


TASK_HEADER = ["task metric", "original", "compressed", "drop [interval]", "items"]


def task_rows(m: dict[str, Any]) -> list[list[str]]:
    """One row per evaluator task metric: both values with their standard errors, the drop and its interval."""
    def with_se(value: float, se: float | None) -> str:
        return f"{value:.4f}" + (f" ± {se:.4f}" if se is not None else "")

    rows = []
    for key, t in sorted((m.get("tasks") or {}).items()):
        ci = t.get("drop_ci")
        drop = f"{t['drop']:+.4f}" + (f" [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else "")
        items = f"{t['items']}{' paired' if t.get('paired') else ''}" if t.get("items") else "-"
        rows.append([key, with_se(t["original"], t.get("original_stderr")),
                     with_se(t["compressed"], t.get("compressed_stderr")), drop, items])
    return rows


def _status(v: dict[str, Any]) -> str:
    return STATUS_TEXT.get(v.get("status", "pass" if v.get("passed") else "fail"), "?")


def verdict_table(report: dict[str, Any]) -> Table:
    """One column per export: the measured metrics (speed-ups with their interval) and each budget's status."""
    table = Table(title=f"verdict: {report['verdict'].upper()}  ({report.get('model', '')})")
    table.add_column("metric")
    exports = list(report.get("verify", {}).items())
    for name, v in exports:
        runtime = (v["metrics"].get("runtime") or {}).get("runtime", "")
        table.add_column(f"{name} [{runtime}]" if runtime else name, justify="right")
    table.add_row("status", *[_status(v) for _, v in exports])
    for label, key, fmt in ROWS:
        table.add_row(label, *[_metric_cell(v["metrics"], key, fmt) for _, v in exports])
    for key in sorted({k for _, v in exports for k in (v["metrics"].get("tasks") or {})}):
        cells = []
        for _, v in exports:
            t = (v["metrics"].get("tasks") or {}).get(key)
            cells.append(f"{t['original']:.3f} -> {t['compressed']:.3f}" if t else "-")
        table.add_row(key, *cells)
    for label, key in (("decode tok/s", "decode_tok_s_median"), ("prefill s", "prefill_s_median")):
        cells = []
        for _, v in exports:
            lat, lat0 = v["metrics"].get("latency"), v["metrics"].get("latency_original")
            cells.append(f"{lat[key]:.3g} (orig {lat0[key]:.3g})" if lat and lat0 else "-")
        table.add_row(label, *cells)
    budget_names = sorted({b["name"] for _, v in exports for b in v["budgets"]})
    for bname in budget_names:
        cells = []
        for _, v in exports:
            b = next((b for b in v["budgets"] if b["name"] == bname), None)
            cells.append("-" if b is None else STATUS_TEXT[b["status"]])
        table.add_row(f"budget {bname}", *cells)
    errors = [(name, v["error"]) for name, v in exports if v.get("error")]
    for name, err in errors:
        table.caption = (table.caption or "") + f"{name}: the {err['model']} model's {err['step']} failed ({err['error_type']}) "
    return table


def parallel_layout(metrics: dict[str, Any]) -> str:
    """'tensor parallel 2 x pipeline parallel 1 (mp)' when the runtime reports a layout, else ''."""
    p = metrics.get("parallel")
    if not p:
        return ""
    backend = p.get("distributed_executor_backend")
    return (f"tensor parallel {p.get('tensor_parallel_size', 1)} x pipeline parallel "
            f"{p.get('pipeline_parallel_size', 1)}" + (f" ({backend})" if backend else ""))


def _export_section(name: str, v: dict[str, Any]) -> list[str]:
    m = v["metrics"]
    runtime = (m.get("runtime") or {}).get("runtime", "?")
    lines = [f"## Export `{name}` in {runtime}: {_status(v)}", ""]
    ref = v.get("reference") or {}
    if ref:
        diff = ref.get("differs_in") or {}
        what = ", ".join(f"{k}: {d['reference']} (compressed: {d['compressed']})" for k, d in diff.items())
        lines += [f"Reference: the original model exported with "
                  f"{'full-precision' if ref.get('mode') == 'full_precision' else 'the same'} options"
                  + (f" ({what})" if what else " (the same as the compressed export's)") + ".", ""]
    layout = parallel_layout(m)
    if layout:
        lines += [f"Parallel layout (both models): {layout}.", ""]
    if m.get("speed_not_compared"):
        lines += [f"Speed not compared: {m['speed_not_compared']}.", ""]
    err = v.get("error")
    if err:
        lines += [f"**Verify error**: the {err['model']} model's {err['step']} failed ({err['error_type']}):", "",
                  "```", err["message"], "```", ""]
        if err.get("hint"):
            lines += [f"Hint: {err['hint']}", ""]
    lines += ["| metric | value |", "|---|---|"]
    for label, key, fmt in ROWS:
        lines.append(f"| {label} | {_metric_cell(m, key, fmt)} |")
    lat, lat0 = m.get("latency"), m.get("latency_original")
    if lat and lat0:
        lines.append(f"| decode tok/s median (p90) | {lat['decode_tok_s_median']:.1f} ({lat['decode_tok_s_p90']:.1f}); "
                     f"original {lat0['decode_tok_s_median']:.1f} |")
        lines.append(f"| prefill s median (p90) | {lat['prefill_s_median']:.4f} ({lat['prefill_s_p90']:.4f}); "
                     f"original {lat0['prefill_s_median']:.4f} |")
        lines.append(f"| timing rounds (interleaved) | {timing_rounds(m)} |")
    if m.get("size_bytes") is not None:
        lines.append(f"| size on disk | {m['size_bytes'] / 2**20:.1f} MiB (original {m['size_bytes_original'] / 2**20:.1f}) |")
    lines.append("")
    tasks = task_rows(m)
    if tasks:
        lines += ["Task metrics (evaluators, measured in this runtime; ± standard error, drop = original - "
                  "compressed with its interval):", "", "| " + " | ".join(TASK_HEADER) + " |",
                  "|" + "---|" * len(TASK_HEADER)]
        lines += ["| " + " | ".join(r) + " |" for r in tasks]
        lines.append("")
    if v["budgets"]:
        lines += ["| budget | result | detail |", "|---|---|---|"]
        lines += [f"| {b['name']} | {STATUS_TEXT[b['status']]} | {b['detail']} |" for b in v["budgets"]]
        lines.append("")
    return lines


def render_markdown(manifest: dict[str, Any], report: dict[str, Any]) -> str:
    """A human-readable report: verdict, budgets, metrics, stages, warnings."""
    lines = [f"# compressor report: {report['verdict'].upper()}", "",
             f"- model: `{report['model']}`"]
    note = (report.get("source") or {}).get("note")
    if note:
        lines.append(f"- note: {note}")
    lines += [f"- parameters: {report['summary']['parameters_original']:,} -> {report['summary']['parameters']:,}",
              f"- layers: {report['summary']['layers']} (uniform: {report['summary']['uniform']})",
              f"- created: {manifest['created']}", ""]
    if report["verdict"] == "error":
        lines += ["Verify could not take every measurement: the exports are complete, the verdict is not. "
                  "See each export's error below.", ""]
    if report["warnings"]:
        lines += ["## Warnings", ""] + [f"- {w}" for w in report["warnings"]] + [""]
    lines += ["## Stages", "", "| stage | method | seconds | peak RSS MB | parameters after |", "|---|---|---|---|---|"]
    for s in report["stages"]:
        lines.append(f"| {s['slot']} | {s['method']} | {s['usage']['seconds']:.1f} | {s['usage']['peak_rss_mb']:.0f} "
                     f"| {s['parameters_after']:,} |")
    lines.append("")
    heal = heal_summaries(report)
    lines += [f"- {line}" for line in heal] + ([""] if heal else [])
    for name, v in report["verify"].items():
        lines += _export_section(name, v)
    return "\n".join(lines) + "\n"


def heal_summaries(report: dict[str, Any]) -> list[str]:
    """One line per heal stage: steps, tokens seen and the held-out figures its method reported."""
    out = []
    for s in report.get("stages") or []:
        d = s.get("details") or {}
        if s.get("slot") != "heal" or "steps" not in d:
            continue
        line = f"heal {s['method']}: {d['steps']} steps"
        if "best_step" in d:
            line += f" (kept step {d['best_step']}{', stopped early' if d.get('stopped_early') else ''})"
        if "tokens_seen" in d:
            line += f", {d['tokens_seen']:,} tokens seen"
        before, after = d.get("held_out_before") or {}, d.get("held_out_after") or {}
        if "perplexity" in before and "perplexity" in after:
            line += f"; held-out perplexity {before['perplexity']:.2f} -> {after['perplexity']:.2f}"
        if "kl" in before and "kl" in after:
            line += f", KL to the original {before['kl']:.4f} -> {after['kl']:.4f}"
        out.append(line + f"; {s['usage']['seconds']:.0f} s, peak RSS {s['usage']['peak_rss_mb']:.0f} MB")
    return out


def plots_section(names: list[str]) -> list[str]:
    """report.md's links to the PNGs in plots/ (the same images report.html embeds)."""
    from compressor.report_plots import PLOTS_DIR

    if not names:
        return []
    return ["## Plots", ""] + [f"![{n}]({PLOTS_DIR}/{n})" for n in names] + [""]


def _plots(report: dict[str, Any]) -> dict[str, bytes]:
    """The report's plots; one that cannot be drawn becomes a warning instead of costing the build."""
    from compressor.report_plots import render_plots

    try:
        return render_plots(report)
    except Exception as exc:  # a plotting bug must not lose a finished build and its verdict
        report.setdefault("warnings", []).append(f"the report's plots could not be drawn: {type(exc).__name__}: {exc}")
        return {}


def write_reports(out: Path, manifest: dict[str, Any], report: dict[str, Any]) -> None:
    """Write plots/, report.json, report.md and report.html, then manifest.json last, listing every file with its SHA-256."""
    from compressor.manifest import MANIFEST_FILE, output_files
    from compressor.report_html import render_html
    from compressor.report_plots import PLOTS_DIR

    plots = _plots(report)
    if plots:
        (out / PLOTS_DIR).mkdir(exist_ok=True)
        for name, data in plots.items():
            (out / PLOTS_DIR / name).write_bytes(data)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "report.md").write_text(render_markdown(manifest, report)
                                      + "".join(f"{line}\n" for line in plots_section(list(plots))))
    (out / "report.html").write_text(render_html(manifest, report, plots))
    manifest["files"] = output_files(out)
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, default=str))
