"""The report's plots, drawn with matplotlib from report.json alone, as PNG bytes by file name.

Each plot answers one question a reader has about a build: which layers changed, where in the
text the compressed model departs from the original, how its timings compare (with the interval
the gate judged), and how a method's loss went. A plot whose data the report lacks is left out.
Figures are made with matplotlib's object API (no pyplot state), so plotting is safe anywhere.
"""

from __future__ import annotations

import io
import itertools
import re
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

ORIGINAL, COMPRESSED, NONZERO, REMOVED = "#9aa5b1", "#2b6cb0", "#dd6b20", "#c53030"
PALETTE = ("#2b6cb0", "#dd6b20", "#2f855a", "#6b46c1", "#b7791f")
PLOTS_DIR = "plots"


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes (no timestamp in the metadata, so equal figures give equal files)."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, metadata={"Software": None})  # constrained layout: no tight bbox pass
    return buf.getvalue()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "x"


def layer_parameters_plot(summary: dict[str, Any]) -> Figure | None:
    """Parameters of each decoder layer of the original and the compressed model, by original index."""
    before, after = summary.get("layer_parameters_original"), summary.get("layer_parameters")
    if not before or not after:
        return None
    x = np.array([r["original_index"] for r in before])
    by_origin = {r["original_index"]: r for r in after}
    kept = np.array([by_origin[i]["parameters"] if i in by_origin else 0 for i in x], dtype=float)
    nonzero = [by_origin[i].get("nonzero") if i in by_origin else 0 for i in x]
    # a quantized original already holds exact zeros: only zeros the compression added are worth a bar
    nonzero_before = [r.get("nonzero") for r in before]
    sparsified = all(n is not None for n in nonzero + nonzero_before) and any(
        i in by_origin and n < 0.99 * n0 for i, n, n0 in zip(x, nonzero, nonzero_before))
    fig = Figure(layout="constrained", figsize=(9, 3.6))
    ax = fig.add_subplot()
    scale = 1e6
    ax.bar(x, [r["parameters"] / scale for r in before], width=0.85, color=ORIGINAL, label="original")
    ax.bar(x, kept / scale, width=0.55, color=COMPRESSED, label="compressed")
    if sparsified:
        ax.bar(x, np.array(nonzero, dtype=float) / scale, width=0.25, color=NONZERO, label="compressed, non-zero")
    removed = [i for i in x if i not in by_origin]
    if removed:
        ax.scatter(removed, [0] * len(removed), marker="x", s=60, color=REMOVED, zorder=3, label="removed layer")
    ax.set_xlabel("decoder layer (index in the original model)")
    ax.set_ylabel("parameters (millions)")
    ax.set_title("Parameters per decoder layer")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.08), ncol=4, fontsize=8, frameon=False)
    ax.set_xticks(x if len(x) <= 40 else x[:: max(1, len(x) // 20)])
    return fig


def per_position_plot(verify: dict[str, Any]) -> Figure | None:
    """KL and NLL change per token position over the evaluation windows, one line per export."""
    series = {name: v["metrics"]["per_position"] for name, v in verify.items()
              if (v.get("metrics") or {}).get("per_position")}
    if not series:
        return None
    fig = Figure(layout="constrained", figsize=(9, 5.2))
    ax_kl, ax_nll = fig.subplots(2, 1, sharex=True)
    for color, (name, pp) in zip(itertools.cycle(PALETTE), series.items()):
        pos = np.arange(1, len(pp["kl"]) + 1)
        for ax, values in ((ax_kl, pp["kl"]), (ax_nll, pp["nll_delta"])):
            ax.plot(pos, values, lw=0.6, alpha=0.35, color=color)
            window = max(1, len(values) // 32)  # a moving mean shows the trend through per-token noise
            smooth = np.convolve(values, np.ones(window) / window, mode="valid")
            start = (window - 1) // 2
            ax.plot(pos[start:start + len(smooth)], smooth, lw=1.6, color=color,
                    label=f"{name} (moving mean of {window})" if window > 1 else name)
    ax_kl.set_ylabel("KL (nats)")
    ax_kl.set_title("Where the compressed model departs from the original (mean over evaluation windows)")
    ax_nll.axhline(0, color="black", lw=0.6)
    ax_nll.set_ylabel("NLL change (nats)")
    ax_nll.set_xlabel("position in the window (tokens of context)")
    ax_kl.legend(fontsize=8)
    return fig


def latency_plot(name: str, v: dict[str, Any]) -> Figure | None:
    """Per-round timings of both models, and the speed-ups with the interval and threshold the gate used."""
    m = v.get("metrics") or {}
    rounds = m.get("latency_rounds")
    if not rounds:
        return None
    busy = set(m.get("busy_rounds") or [])
    fig = Figure(layout="constrained", figsize=(10, 3.4))
    axes = fig.subplots(1, 3)
    for ax, key, label in ((axes[0], "decode_tok_s", "decode tokens/s"), (axes[1], "prefill_s", "prefill seconds")):
        data = [rounds["original"][key], rounds["compressed"][key]]
        ax.boxplot(data, widths=0.5, showfliers=False)
        for pos, values in enumerate(data, start=1):
            jitter = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else [0.0]
            colors = [REMOVED if r + 1 in busy else (ORIGINAL if pos == 1 else COMPRESSED) for r in range(len(values))]
            ax.scatter(pos + np.asarray(jitter), values, s=14, c=colors, zorder=3)
        ax.set_xticks([1, 2], ["original", "compressed"])
        ax.set_title(label, fontsize=10)
    ax = axes[2]
    thresholds = {b["name"]: b["limit"] for b in v.get("budgets", [])}
    for pos, (key, budget, label) in enumerate((("decode_speedup", "min_speedup", "decode"),
                                                ("prefill_speedup", "min_prefill_speedup", "prefill")), start=1):
        if m.get(key) is None:
            continue
        low, high = m[f"{key}_ci"]
        ax.errorbar([pos], [m[key]], yerr=[[m[key] - low], [high - m[key]]], fmt="o", color=COMPRESSED, capsize=6)
        ratios = m.get(f"{key}_rounds") or []
        ax.scatter([pos + 0.2] * len(ratios), ratios, s=10, color=ORIGINAL, zorder=2)
        if budget in thresholds:
            ax.hlines(thresholds[budget], pos - 0.3, pos + 0.3, colors=REMOVED, linestyles="dashed")
    ax.axhline(1.0, color="black", lw=0.6)
    ax.set_xticks([1, 2], ["decode", "prefill"])
    ax.set_xlim(0.5, 2.6)
    ax.set_title(f"speed-up, {m.get('speedup_rounds', '?')} rounds "
                 f"({100 * m.get('speedup_confidence', 0.95):.0f}% interval)", fontsize=10)
    fig.suptitle(f"Latency in {(m.get('runtime') or {}).get('runtime', name)}: export {name}"
                 + (f" ({len(busy)} busy round(s) in red, left out)" if busy else ""), fontsize=11)
    return fig


def loss_curve_plot(stage: dict[str, Any]) -> Figure | None:
    """The loss curves a method reported (``details['loss_curves']``, see :func:`compressor.api.loss_curve`)."""
    curves = (stage.get("details") or {}).get("loss_curves") or []
    if not curves:
        return None
    fig = Figure(layout="constrained", figsize=(4.5 * len(curves), 3.4))
    for ax, curve in zip(np.atleast_1d(fig.subplots(1, len(curves))), curves):
        for label, values in curve["series"].items():
            ax.plot(curve["x"][: len(values)], values, marker="o", ms=3, label=label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(curve["x_label"])
        ax.set_ylabel(curve["y_label"])
        ax.set_title(curve["title"], fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle(f"{stage['slot']} {stage['method']}", fontsize=11)
    return fig


def render_plots(report: dict[str, Any]) -> dict[str, bytes]:
    """Every plot the report's data allows, as PNG bytes by file name, in reading order."""
    figures: dict[str, Figure | None] = {"layers.png": layer_parameters_plot(report.get("summary") or {}),
                                         "per-position.png": per_position_plot(report.get("verify") or {})}
    for name, v in (report.get("verify") or {}).items():
        figures[f"latency-{_safe(name)}.png"] = latency_plot(name, v)
    for i, stage in enumerate(report.get("stages") or []):
        figures[f"loss-{i}-{_safe(stage['method'])}.png"] = loss_curve_plot(stage)
    return {name: png_bytes(fig) for name, fig in figures.items() if fig is not None}
