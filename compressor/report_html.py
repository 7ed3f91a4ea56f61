"""report.html: the build's verdict, budgets, metrics and plots in one self-contained file.

Inline CSS and PNG data URIs only: no script, no network. A Content-Security-Policy says so to the
browser, so the file shows the same wherever it is opened, attached to a CI job or mailed.
"""

from __future__ import annotations

import base64
from html import escape
from typing import Any

from compressor.report import (ROWS, STATUS_TEXT, TASK_HEADER, _metric_cell, _status, heal_summaries,
                               parallel_layout, task_rows, timing_rounds)

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px;
       padding: 0 1em; color: #1a202c; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #e2e8f0; }
.verdict { display: inline-block; padding: .15em .6em; border-radius: .3em; color: #fff; }
.pass { background: #2f855a; } .fail { background: #c53030; } .error { background: #6b46c1; }
.inconclusive { background: #b7791f; }
table { border-collapse: collapse; margin: .6em 0; } th, td { border: 1px solid #e2e8f0; padding: .3em .6em;
text-align: left; vertical-align: top; } th { background: #f7fafc; } td.num { text-align: right; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; border: 1px solid #e2e8f0; }
figcaption { color: #4a5568; font-size: .9em; } .warn { color: #975a16; } code { background: #f7fafc; }
"""
CAPTIONS = {
    "layers": "Parameters of each decoder layer before (grey) and after (blue) compression; a cross marks a "
              "removed layer, orange the non-zero weights left by sparsity.",
    "per-position": "KL divergence and NLL change of the compressed model against the original at each "
                    "position of the evaluation windows, in the export's runtime.",
    "latency": "Per-round prefill and decode timings of both models (interleaved rounds), and the speed-ups "
               "with the interval the gate judged; dashed lines are the budgets' thresholds.",
    "loss": "The loss curves this stage's method reported.",
}


def _badge(status: str) -> str:
    return f'<span class="verdict {escape(status)}">{escape(STATUS_TEXT.get(status, status.upper()))}</span>'


def _table(header: list[str], rows: list[list[str]]) -> str:
    """A table; cells are already escaped HTML."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _export_tables(name: str, v: dict[str, Any]) -> str:
    m = v.get("metrics") or {}
    runtime = (m.get("runtime") or {}).get("runtime", "?")
    parts = [f"<h2>Export <code>{escape(name)}</code> in {escape(str(runtime))}: {_badge(v.get('status', '?'))}</h2>"]
    layout = parallel_layout(m)
    if layout:
        parts.append(f"<p>Parallel layout (both models): {escape(layout)}.</p>")
    err = v.get("error")
    if err:
        parts.append(f"<p><b>Verify error</b>: the {escape(err['model'])} model's {escape(err['step'])} failed "
                     f"({escape(err['error_type'])}).</p><pre>{escape(err['message'])}</pre>")
    rows = [[escape(label), escape(_metric_cell(m, key, fmt))] for label, key, fmt in ROWS]
    lat, lat0 = m.get("latency"), m.get("latency_original")
    if lat and lat0:
        rows.append(["decode tok/s median", f"{lat['decode_tok_s_median']:.1f} (original "
                                            f"{lat0['decode_tok_s_median']:.1f})"])
        rows.append(["prefill s median", f"{lat['prefill_s_median']:.4f} (original {lat0['prefill_s_median']:.4f})"])
        rows.append(["timing rounds", escape(timing_rounds(m))])
    parts.append(_table(["metric", "value"], rows))
    tasks = task_rows(m)
    if tasks:
        parts.append("<h3>Task metrics</h3>" + _table(TASK_HEADER, [[escape(c) for c in r] for r in tasks]))
    return "".join(parts)


def _figures(plots: dict[str, bytes]) -> str:
    parts = []
    for name, data in plots.items():
        kind = name.split("-", 1)[0].removesuffix(".png") if not name.startswith("per-position") else "per-position"
        src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        parts.append(f'<figure><img src="{src}" alt="{escape(name)}"><figcaption>{escape(name)}: '
                     f"{escape(CAPTIONS.get(kind, ''))}</figcaption></figure>")
    return "".join(parts)


def render_html(manifest: dict[str, Any], report: dict[str, Any], plots: dict[str, bytes]) -> str:
    """The whole report as one HTML page, the plots embedded."""
    summary = report.get("summary") or {}
    verify = report.get("verify") or {}
    facts = [["model", f"<code>{escape(str(report.get('model')))}</code>"]]
    if summary:  # a build's report; `compress verify` has the artifact instead
        facts += [["parameters", f"{summary.get('parameters_original', 0):,} &rarr; {summary.get('parameters', 0):,}"],
                  ["layers", escape(str(summary.get("layers", "?")))]]
    if report.get("artifact"):
        facts.append(["artifact", f"<code>{escape(str(report['artifact']))}</code> ({escape(str(report.get('format')))})"])
    facts.append(["created", escape(str(manifest.get("created", "?")))])
    parts = [f"<h1>compressor report: {_badge(report['verdict'])}</h1>", _table(["", ""], facts)]
    if report["verdict"] == "error":
        parts.append("<p>Verify could not take every measurement: the exports are complete, the verdict is not. "
                     "See each export's error below.</p>")
    if report.get("warnings"):
        parts.append("<h2>Warnings</h2><ul>" + "".join(f'<li class="warn">{escape(w)}</li>'
                                                       for w in report["warnings"]) + "</ul>")
    budgets = [[f"<code>{escape(name)}</code>", escape(b["name"]), _badge(b["status"]), escape(b["detail"])]
               for name, v in verify.items() for b in v.get("budgets", [])]
    parts.append("<h2>Budgets</h2>" + (_table(["export", "budget", "result", "detail"], budgets) if budgets
                                       else "<p>No budget was set.</p>"))
    stages = [[escape(s["slot"]), escape(s["method"]), f"{s['usage']['seconds']:.1f}",
               f"{s['usage']['peak_rss_mb']:.0f}", f"{s['parameters_after']:,}"] for s in report.get("stages", [])]
    if stages:
        parts.append("<h2>Stages</h2>" + _table(["stage", "method", "seconds", "peak RSS MB", "parameters after"],
                                                stages))
        parts += [f"<p>{escape(line)}</p>" for line in heal_summaries(report)]
    parts += [_export_tables(name, v) for name, v in verify.items()]
    if plots:
        parts.append("<h2>Plots</h2>" + _figures(plots))
    title = f"compressor report: {report['verdict'].upper()} ({report.get('model')})"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
            + "\n".join(parts) + "</body></html>\n")
