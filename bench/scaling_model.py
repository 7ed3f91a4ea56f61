"""The time and memory model of data-parallel layer-sequential calibration (docs/scaling.md).

Per decoder layer of a Llama-shaped model (hidden d, FFN f, KV width k = KV heads x head size) over
T = N x L calibration tokens split across p ranks:

- forward:   2 T P_layer FLOPs per pass (P_layer = d(d + 2k) + d^2 + 3 d f weights), two passes
             (statistics, then the compressed layer's outputs), plus attention 4 N L^2 d;
- statistics: input Hessians, 2 T (3 d^2 + f^2) FLOPs (q/k/v, o, gate/up share theirs; down reads f);
              Wanda's input norms cost 2 T (3 d + f), negligible;
- solve:     SparseGPT/GPTQ per linear (in c, out r): c^3 (Cholesky and inverse) + 2 r c^2 (the update);
             every rank solves the same layer, so the solve is not divided by p;
- all-reduce: the statistics' float64 sums, 8 (3 d^2 + f^2) bytes; a ring all-reduce moves 2 (p - 1) / p of that
             per rank; then rank 0's compressed layer, 4 P_layer bytes, is broadcast;
- memory per rank: the weights (or one layer when offloaded), the calibration hidden states of its
             share (4 T d / p bytes, twice: inputs and outputs of a layer), one layer's statistics, and
             the largest intermediate activation (4 T f / p).

The hardware enters as three constants: the matmul rate of one rank (FLOP/s, at the threads or the
GPU it has), the all-reduce bandwidth between ranks (bytes/s) and its latency per call.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Shape:
    """A Llama-shaped decoder."""

    name: str
    layers: int
    hidden: int
    ffn: int
    kv: int  # KV heads x head size
    vocab: int

    def layer_params(self) -> int:
        """Weights of one decoder layer's seven linears."""
        d, f, k = self.hidden, self.ffn, self.kv
        return d * (d + 2 * k) + d * d + 3 * d * f

    def params(self) -> int:
        """All weights, untied embeddings and head included."""
        return self.layers * self.layer_params() + 2 * self.vocab * self.hidden


@dataclass(frozen=True)
class Hardware:
    """What one rank can do, and how fast the ranks talk."""

    name: str
    flops: float  # sustained matmul FLOP/s of one rank in the calibration dtype
    bandwidth: float  # all-reduce bus bandwidth between ranks, bytes/s
    latency: float = 1e-4  # seconds per collective call
    solve_flops: float | None = None  # FLOP/s of the per-linear solve (default: flops)


@dataclass(frozen=True)
class Prediction:
    """Predicted seconds and bytes of one calibration run."""

    compute_s: float
    solve_s: float
    comm_s: float
    peak_bytes: int

    @property
    def total_s(self) -> float:
        """Calibration seconds (loading and export not included)."""
        return self.compute_s + self.solve_s + self.comm_s


SOLVES = {"sparsegpt": True, "gptq": True, "wanda": False}


def predict(shape: Shape, hw: Hardware, ranks: int, windows: int, seqlen: int, method: str = "sparsegpt",
            offload: bool = False, dtype_bytes: int = 4) -> Prediction:
    """Time and peak memory per rank of ``method``'s layer-sequential calibration on ``ranks`` ranks."""
    d, f, k = shape.hidden, shape.ffn, shape.kv
    tokens = windows * seqlen / ranks
    p_layer = shape.layer_params()
    forward = 2 * (2 * tokens * p_layer + 4 * (windows / ranks) * seqlen ** 2 * d)
    stats = 2 * tokens * (3 * d * d + f * f) if SOLVES.get(method, True) else 2 * tokens * (3 * d + f)
    solve = 0.0
    if SOLVES.get(method, True):
        for c, r in ((d, d), (d, k), (d, k), (d, d), (d, f), (d, f), (f, d)):
            solve += c ** 3 + 2 * r * c * c
    # float64 running sums go over the wire; in memory they sit beside a float32 chunk product
    stat_bytes = 8 * (3 * d * d + f * f) if SOLVES.get(method, True) else 8 * (3 * d + f)
    comm = 0.0
    if ranks > 1:
        moved = 2 * (ranks - 1) / ranks * stat_bytes + 4 * p_layer
        comm = shape.layers * (moved / hw.bandwidth + 8 * hw.latency)
    weights = (p_layer + 2 * shape.vocab * d) * dtype_bytes if offload else shape.params() * dtype_bytes
    activations = int(4 * tokens * d * 2 + 4 * tokens * f)
    peak = int(weights + activations + stat_bytes * 3 // 2 + 4 * p_layer)
    return Prediction(shape.layers * (forward + stats) / hw.flops,
                      shape.layers * solve / (hw.solve_flops or hw.flops), comm, peak)


SMOLLM2 = Shape("SmolLM2-135M", layers=30, hidden=576, ffn=1536, kv=192, vocab=49152)
LLAMA3_8B = Shape("Llama-3-8B", layers=32, hidden=4096, ffn=14336, kv=1024, vocab=128256)
LLAMA3_70B = Shape("Llama-3-70B", layers=80, hidden=8192, ffn=28672, kv=1024, vocab=128256)

# Assumed, not measured here: an H100 SXM sustains ~50 TFLOP/s in fp32 matmuls without TF32 (67 peak);
# NCCL all-reduce bus bandwidth ~360 GB/s over NVLink inside a node and ~40 GB/s over 400 Gb/s
# InfiniBand between two nodes. The solve (Cholesky, triangular solves) runs at a fraction of that.
H100_NVLINK = Hardware("H100 SXM, NVLink", flops=50e12, bandwidth=360e9, latency=3e-5, solve_flops=10e12)
H100_TWO_NODES = Hardware("H100 SXM, 2 nodes over 400 Gb/s IB", flops=50e12, bandwidth=40e9, latency=1e-4,
                          solve_flops=10e12)


def predict_surgeon(shape: Shape, hw: Hardware, ranks: int, windows: int, seqlen: int, shots: int) -> Prediction:
    """LLM Surgeon: per shot a full forward and backward pass over the rank's windows with KFAC hooks.

    Per shot: forward + backward to the activations (no weight gradients) ~ 3 x 2 T P FLOPs with the LM
    head; the factors A (inputs, 2 T (3 d^2 + f^2)) and G (output gradients, 2 T (3 d^2 + 2 k^2 + 2 f^2));
    every rank inverts every factor (c^3 each) and prunes the same weights; the factor sums are
    all-reduced and rank 0's model is broadcast. After the shots, every rank measures the calibration loss
    over all windows (one forward pass, not split).
    """
    d, f, k = shape.hidden, shape.ffn, shape.kv
    tokens = windows * seqlen / ranks
    per_pass = 2 * tokens * (shape.layers * shape.layer_params() + shape.vocab * d)
    a_flops, g_flops = 2 * tokens * (3 * d * d + f * f), 2 * tokens * (3 * d * d + 2 * k * k + 2 * f * f)
    compute = shots * (3 * per_pass + shape.layers * (a_flops + g_flops)) + per_pass * ranks
    inverse = shape.layers * (3 * d ** 3 + f ** 3 + 3 * d ** 3 + 2 * k ** 3 + 2 * f ** 3)
    factor_bytes = 4 * (3 * d * d + f * f + 3 * d * d + 2 * k * k + 2 * f * f)
    comm = 0.0
    if ranks > 1:
        moved = shape.layers * 2 * (ranks - 1) / ranks * factor_bytes + 4 * shape.params()
        comm = shots * (moved / hw.bandwidth + 14 * shape.layers * hw.latency)
    activations = int(tokens * (shape.layers * (4 * d + 2 * k + 2 * f) * 4 + 4 * shape.vocab))
    peak = int(4 * shape.params() + shape.layers * factor_bytes * 2 + activations)
    return Prediction(compute / hw.flops, shots * inverse / (hw.solve_flops or hw.flops), comm, peak)


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f}"


def prediction_table(windows: int = 128, seqlen: int = 2048) -> str:
    """The Markdown table of docs/scaling.md: SparseGPT on Llama-3-8B and 70B on 1, 2, 8 H100s and 2 nodes."""
    rows = ["| model | GPUs | compute s | solve s | all-reduce s | total s | peak GiB per GPU |",
            "|---|---|---|---|---|---|---|"]
    for shape in (LLAMA3_8B, LLAMA3_70B):
        for ranks, hw in ((1, H100_NVLINK), (2, H100_NVLINK), (8, H100_NVLINK), (16, H100_TWO_NODES)):
            p = predict(shape, hw, ranks, windows, seqlen, "sparsegpt", offload=True)
            where = f"{ranks}" if ranks <= 8 else "2 nodes x 8"
            rows.append(f"| {shape.name} | {where} | {p.compute_s:.0f} | {p.solve_s:.0f} | {p.comm_s:.1f} | "
                        f"{p.total_s:.0f} | {_gib(p.peak_bytes)} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(prediction_table())
