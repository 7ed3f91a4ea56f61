"""Options of the ``surgeon`` method."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from compressor.api import PluginOptions
from compressor_methods._pruning import resolve_structure


class SurgeonOptions(PluginOptions):
    """LLM Surgeon options. Example recipe stage: ``{method: surgeon, options: {structure: structured, sparsity: 0.2}}``."""

    structure: Literal["unstructured", "n:m", "structured"] | None = Field(
        None, description="'unstructured' (single weights), 'n:m' (needs pattern) or 'structured' (whole MLP "
                          "neurons and KV groups; layers end up with different sizes). Default: 'n:m' when "
                          "pattern is set, else 'unstructured'")
    sparsity: float | None = Field(None, gt=0.0, lt=1.0,
                                   description="unstructured: fraction of the targeted weights removed (default "
                                               "0.5); structured: fraction of the decoder's linear parameters "
                                               "removed (default 0.2); fixed by the pattern for n:m")
    pattern: str | None = Field(None, description="N:M pattern such as '2:4': N zeros in every M consecutive "
                                                  "weights of a row")
    include: list[str] = Field(["*"], description="fnmatch patterns of linears to prune, on names like "
                                                  "'layers.3.mlp.down_proj' (unstructured and n:m)")
    exclude: list[str] = Field([], description="fnmatch patterns of linears to leave dense")
    shots: int = Field(5, ge=1, le=200, description="shots of the linear schedule; curvature is recomputed on the "
                                                    "current model before each (the paper uses 40)")
    damp_g: float | None = Field(None, gt=0.0, le=10.0,
                                 description="dampening of G as a fraction of its mean diagonal (default 0.1 for "
                                             "unstructured and n:m, 0.01 for structured, as in the paper's scripts)")
    damp_a: float = Field(0.01, gt=0.0, le=10.0, description="dampening of A as a fraction of its mean diagonal")
    max_correlate: int = Field(256, ge=1, le=4096,
                               description="unstructured and n:m: weights whose correlations are solved together "
                                           "(whole rows up to this many weights, or row-major runs with "
                                           "hold_pruned false or add_update false); larger is more exact and "
                                           "slower (cubic); the paper uses 2000")
    n_m_schedule: Literal["global", "per_row"] = Field(
        "global", description="n:m: which blocks each shot prunes: 'global' ranks every block of the model on "
                              "one cost scale (the paper), 'per_row' prunes the same share of every row's "
                              "blocks (its cheapest) each shot, so no matrix meets all its pruning in the last shot")
    add_update: bool = Field(True, description="unstructured and n:m: solve the max_correlate chunks one after "
                                               "another, each on the weights the earlier chunks' updates left "
                                               "(the paper's --addupdate); false solves them independently in "
                                               "batches and sums the updates (faster, less exact)")
    hold_pruned: bool = Field(True, description="add_update: each chunk is whole rows, and its system also holds "
                                                "the rows' weights pruned in earlier shots, so the update keeps "
                                                "them at zero rather than moving them and having them re-zeroed "
                                                "(which undoes part of the compensation); false runs the paper's "
                                                "chunks of new weights only")
    adaptive_n_m: bool = Field(True, description="n:m with add_update: which N weights of a block go is chosen when "
                                                 "its rows are solved, from the weights earlier chunks' updates "
                                                 "left (as SparseGPT does), not once at the start of the shot")
    min_density: float = Field(0.05, ge=0.0, lt=1.0,
                               description="keeps every layer viable: the least fraction of weights every matrix "
                                           "keeps (unstructured), or of MLP neurons every layer keeps (structured)")
    kv_groups: bool = Field(False, description="structured: also remove whole KV groups (a KV head with the query "
                                               "heads that read it; every layer keeps one). Off by default: "
                                               "vLLM's DeciLM form keeps the query-head count global, so it can "
                                               "only pad such layers (no faster) or refuse them; GGUF and ONNX "
                                               "run them")
    width_multiple: int = Field(64, ge=1, le=1024,
                                description="structured: every layer keeps a multiple of this many MLP neurons "
                                            "(or all of them); runtimes run odd widths slowly (measured: llama.cpp "
                                            "prefill). 1 turns it off")
    nsamples: int | None = Field(None, ge=1, description="use the first N calibration windows (default: all)")
    seqlen: int | None = Field(None, ge=2, description="cut calibration windows to this many tokens (default: all)")
    batch_size: int = Field(4, ge=1, description="windows per forward/backward pass")
    device: str | None = Field(None, description="compute device, 'cpu' or 'cuda[:i]' (default: the build's device)")
    factors_on: Literal["cpu", "device", "disk"] = Field(
        "cpu", description="where the KFAC factors and their inverses are kept between passes: host RAM "
                           "(default), the compute device (faster), or memory-mapped files in factors_dir "
                           "(for models whose factors do not fit in RAM; deleted after each shot)")
    factors_dir: str | None = Field(None, description="factors_on: disk: the directory for the factor files "
                                                      "(default: the system temporary directory)")
    gradient_checkpointing: bool = Field(False, description="recompute layer activations during the backward "
                                                            "pass: less memory, about 30% more time")

    @model_validator(mode="after")
    def _consistent(self) -> SurgeonOptions:
        structure = resolve_structure(self.structure, self.pattern, self.sparsity)
        if structure == "structured" and (self.include != ["*"] or self.exclude):
            raise ValueError("structure 'structured' competes over every layer; include/exclude are not allowed")
        self.structure = structure
        return self

    @property
    def target(self) -> float:
        """Final fraction removed: of targeted weights, of N:M blocks (1.0), or of decoder linear parameters."""
        if self.structure == "n:m":
            return 1.0
        if self.sparsity is not None:
            return self.sparsity
        return 0.2 if self.structure == "structured" else 0.5

    @property
    def g_damping(self) -> float:
        """Dampening of G with its structure-dependent default applied."""
        if self.damp_g is not None:
            return self.damp_g
        return 0.01 if self.structure == "structured" else 0.1
