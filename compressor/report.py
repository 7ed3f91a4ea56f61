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


def _fmt(fmt: str, value: Any) -> str:
    return "-" if value is None else fmt.format(value)


def verdict_table(report: dict[str, Any]) -> Table:
    """One column per export: the measured metrics and the pass/fail of each budget."""
    table = Table(title=f"verdict: {report['verdict'].upper()}  ({report.get('model', '')})")
    table.add_column("metric")
    exports = list(report.get("verify", {}).items())
    for name, v in exports:
        runtime = v["metrics"].get("runtime", {}).get("runtime", "")
        table.add_column(f"{name} [{runtime}]" if runtime else name, justify="right")
    for label, key, fmt in ROWS:
        table.add_row(label, *[_fmt(fmt, v["metrics"].get(key)) for _, v in exports])
    for label, key in (("decode tok/s", "decode_tok_s_median"), ("prefill s", "prefill_s_median")):
        table.add_row(label, *[f"{v['metrics']['latency'][key]:.3g} (orig {v['metrics']['latency_original'][key]:.3g})"
                               for _, v in exports])
    budget_names = sorted({b["name"] for _, v in exports for b in v["budgets"]})
    for bname in budget_names:
        cells = []
        for _, v in exports:
            b = next((b for b in v["budgets"] if b["name"] == bname), None)
            cells.append("-" if b is None else ("PASS" if b["passed"] else "FAIL"))
        table.add_row(f"budget {bname}", *cells)
    return table


def render_markdown(manifest: dict[str, Any], report: dict[str, Any]) -> str:
    """A human-readable report: verdict, budgets, metrics, stages, warnings."""
    lines = [f"# compressor report: {report['verdict'].upper()}", "",
             f"- model: `{report['model']}`",
             f"- parameters: {report['summary']['parameters_original']:,} -> {report['summary']['parameters']:,}",
             f"- layers: {report['summary']['layers']} (uniform: {report['summary']['uniform']})",
             f"- created: {manifest['created']}", ""]
    if report["warnings"]:
        lines += ["## Warnings", ""] + [f"- {w}" for w in report["warnings"]] + [""]
    lines += ["## Stages", "", "| stage | method | seconds | peak RSS MB | parameters after |", "|---|---|---|---|---|"]
    for s in report["stages"]:
        lines.append(f"| {s['slot']} | {s['method']} | {s['usage']['seconds']:.1f} | {s['usage']['peak_rss_mb']:.0f} "
                     f"| {s['parameters_after']:,} |")
    lines.append("")
    for name, v in report["verify"].items():
        m = v["metrics"]
        lines += [f"## Export `{name}` in {m.get('runtime', {}).get('runtime', '?')}: "
                  f"{'PASS' if v['passed'] else 'FAIL'}", "", "| metric | value |", "|---|---|"]
        for label, key, fmt in ROWS:
            lines.append(f"| {label} | {_fmt(fmt, m.get(key))} |")
        lat, lat0 = m["latency"], m["latency_original"]
        lines.append(f"| decode tok/s median (p90) | {lat['decode_tok_s_median']:.1f} ({lat['decode_tok_s_p90']:.1f}); "
                     f"original {lat0['decode_tok_s_median']:.1f} |")
        lines.append(f"| prefill s median (p90) | {lat['prefill_s_median']:.4f} ({lat['prefill_s_p90']:.4f}); "
                     f"original {lat0['prefill_s_median']:.4f} |")
        lines.append(f"| size on disk | {m['size_bytes'] / 2**20:.1f} MiB (original {m['size_bytes_original'] / 2**20:.1f}) |")
        lines.append("")
        if v["budgets"]:
            lines += ["| budget | result | detail |", "|---|---|---|"]
            lines += [f"| {b['name']} | {'PASS' if b['passed'] else 'FAIL'} | {b['detail']} |" for b in v["budgets"]]
            lines.append("")
    return "\n".join(lines) + "\n"


def write_reports(out: Path, manifest: dict[str, Any], report: dict[str, Any]) -> None:
    """Write manifest.json, report.json and report.md into ``out``."""
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "report.md").write_text(render_markdown(manifest, report))
