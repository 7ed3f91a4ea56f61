"""``compress inspect``: per-layer redundancy scores, what each depth method would drop, JSON and a plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from compressor.errors import UsageError
from compressor.layer_similarity import LayerSimilarity, measure_similarity
from compressor.model import ModelHandle


def _round(values: Any) -> list[float]:
    return [round(float(v), 6) for v in values]


def _lowest(scores: np.ndarray, count: int) -> list[int]:
    return sorted(int(i) for i in np.argsort(scores, kind="stable")[:count])


def _iterative_bi(model: ModelHandle, windows: np.ndarray, count: int, batch_size: int) -> list[int]:
    """Iterative ShortGPT on a temporarily shortened layer list; the model is restored afterwards."""
    full = model.model.model.layers
    remaining = list(range(len(full)))
    removed: list[int] = []
    try:
        for _ in range(count):
            model.model.model.layers = type(full)([full[i] for i in remaining])
            bi = measure_similarity(model, windows, batch_size).block_influence()
            removed.append(remaining.pop(int(np.argmin(bi))))
    finally:
        model.model.model.layers = full
    return sorted(removed)


def inspect_data(model: ModelHandle, sim: LayerSimilarity, count: int, all_tokens: bool = False,
                 iterative: list[int] | None = None) -> dict[str, Any]:
    """Assemble the inspect report from measured similarities (pure: no forward pass)."""
    n_layers = sim.num_layers
    bi = sim.block_influence()
    cos_next = sim.cosine_next()
    ang_next = sim.angular_distance(1, all_tokens)
    ang_n = sim.angular_distance(count, all_tokens)
    ang_start = int(np.argmin(ang_n))
    drop: dict[str, Any] = {"block_influence": _lowest(bi, count),
                            "angular": list(range(ang_start, ang_start + count))}
    if iterative is not None:
        drop["block_influence_iterative"] = iterative
    streamline: dict[str, Any] | None = None
    if count + 1 <= n_layers:
        block_cos = sim.block_similarity(count + 1)
        j = int(np.argmax(block_cos))
        drop["streamline"] = list(range(j + 1, j + count + 1))
        streamline = {"replaced_block": list(range(j, j + count + 1)), "replacement_index": j,
                      "block_cosine": _round(block_cos)}
    layers = [{"index": i, "block_influence": round(float(bi[i]), 6), "cosine_in_out": round(float(cos_next[i]), 6),
               "angular_distance_next": round(float(ang_next[i]), 6)} for i in range(n_layers)]
    return {"model": model.source.ref, "num_layers": n_layers, "count": count, "all_tokens": all_tokens,
            "calibration": {"windows": sim.samples, "tokens": sim.tokens},
            "layers": layers, "angular_distance_n": _round(ang_n),
            "would_drop": drop, "streamline": streamline,
            "notes": {"block_influence": "1 - mean cosine(input, output) of each layer over all tokens (ShortGPT); "
                                         "low = redundant",
                      "angular_distance": "arccos(cosine)/pi between the input of layer l and the output of layer "
                                          "l+n-1, " + ("all tokens" if all_tokens else "last token of each window")
                                          + " (Gromov et al.); low = redundant block",
                      "streamline": "block of count+1 layers with the most similar input and output, replaced by "
                                    "one trained layer (LLM-Streamline)"}}


def run_inspect(model: ModelHandle, windows: np.ndarray, count: int, out_dir: Path, all_tokens: bool = False,
                batch_size: int = 4) -> dict[str, Any]:
    """Score every layer on ``windows``, write out_dir/inspect.json and inspect.png, and return the data."""
    n_layers = model.num_layers
    if not 1 <= count < n_layers:
        raise UsageError(f"--count {count} is out of range for this {n_layers}-layer model",
                         hint=f"choose a count from 1 to {n_layers - 1}")
    sim = measure_similarity(model, windows, batch_size)
    data = inspect_data(model, sim, count, all_tokens, _iterative_bi(model, windows, count, batch_size))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "inspect.json").write_text(json.dumps(data, indent=2) + "\n")
    plot_inspect(data, out_dir / "inspect.png")
    return data


def plot_inspect(data: dict[str, Any], path: Path) -> None:
    """Draw per-layer BI and cosine, and the block angular distances, marking the layers each method drops."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed; never opens a window
    import matplotlib.pyplot as plt

    layers = data["layers"]
    idx = np.array([row["index"] for row in layers])
    bi = np.array([row["block_influence"] for row in layers])
    cos = np.array([row["cosine_in_out"] for row in layers])
    count, drop = data["count"], data["would_drop"]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(8.0, 0.32 * len(idx) + 3), 8), sharex=True,
                                   constrained_layout=True)

    colours = ["tab:red" if i in set(drop["block_influence"]) else "tab:blue" for i in idx]
    ax1.bar(idx, bi, color=colours, label="Block Influence (red: ShortGPT would drop)")
    for i in drop.get("block_influence_iterative", []):
        ax1.plot(i, bi[i], marker="v", color="black", linestyle="none")
    if drop.get("block_influence_iterative"):
        ax1.plot([], [], marker="v", color="black", linestyle="none", label="iterative BI would drop")
    ax1.set_ylabel("Block Influence = 1 − cos(in, out)")
    ax1.set_title(f"{data['model']}: where is the model redundant? ({data['num_layers']} layers, "
                  f"count = {count}, {data['calibration']['windows']} windows)")
    twin = ax1.twinx()
    twin.plot(idx, cos, color="tab:green", marker=".", label="cosine(in, out)")
    twin.set_ylabel("cosine(layer input, layer output)")
    handles = ax1.get_legend_handles_labels()
    handles2 = twin.get_legend_handles_labels()
    ax1.legend(handles[0] + handles2[0], handles[1] + handles2[1], loc="best", fontsize=8)

    ang = np.array(data["angular_distance_n"])
    ax2.plot(np.arange(len(ang)), ang, marker="o", color="tab:purple",
             label=f"angular distance d(l, n={count}) of the block starting at l")
    ang1 = np.array([row["angular_distance_next"] for row in layers])
    ax2.plot(idx, ang1, marker=".", color="tab:gray", linestyle="--", label="angular distance d(l, 1)")
    a = drop["angular"]
    ax2.axvspan(a[0] - 0.45, a[-1] + 0.45, color="tab:purple", alpha=0.15,
                label=f"angular would drop {a[0]}–{a[-1]}")
    if data.get("streamline"):
        block = data["streamline"]["replaced_block"]
        ax2.axvspan(block[0] - 0.45, block[-1] + 0.45, facecolor="none", edgecolor="tab:orange", hatch="//",
                    label=f"streamline replaces {block[0]}–{block[-1]} with one layer")
    ax2.set_xlabel("layer index (block start for d(l, n))")
    ax2.set_ylabel("arccos(cos)/π")
    ax2.set_xticks(idx)
    ax2.legend(loc="best", fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render_inspect_table(data: dict[str, Any]) -> Any:
    """Return a rich Table: one row per layer with its scores and which methods would drop it."""
    from rich.table import Table

    count, drop = data["count"], data["would_drop"]
    ang = data["angular_distance_n"]
    table = Table(title=f"{data['model']}: per-layer redundancy (count = {count}; lower = more redundant)")
    table.add_column("layer", justify="right")
    table.add_column("BI", justify="right")
    table.add_column("cos(in,out)", justify="right")
    table.add_column("d(l,1)", justify="right")
    table.add_column(f"d(l,{count})", justify="right")
    table.add_column("would be dropped by")
    marks = {"block_influence": "BI", "block_influence_iterative": "BI-iter", "angular": "angular",
             "streamline": "streamline"}
    for row in data["layers"]:
        i = row["index"]
        by = [label for key, label in marks.items() if i in set(drop.get(key, []))]
        table.add_row(str(i), f"{row['block_influence']:.4f}", f"{row['cosine_in_out']:.4f}",
                      f"{row['angular_distance_next']:.4f}", f"{ang[i]:.4f}" if i < len(ang) else "",
                      ", ".join(by), style="bold red" if by else None)
    return table


__all__ = ["inspect_data", "plot_inspect", "render_inspect_table", "run_inspect"]
