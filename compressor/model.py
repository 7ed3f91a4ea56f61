"""The model handle every stage works on: an HF causal LM whose layers may differ in size."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LayerSpec:
    """Sizes of one decoder layer, read from its weights (0 heads: no attention; 0 width: no FFN)."""

    index: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int

    def to_dict(self) -> dict[str, int]:
        """Return a JSON-serialisable view."""
        return asdict(self)


@dataclass
class ModelSource:
    """Where the input model came from, for the manifest."""

    ref: str
    path: str
    kind: str  # "builtin", "gguf", "hf-dir", "hub"
    sha256: str | None = None
    files: list[str] = field(default_factory=list)


class ModelHandle:
    """An HF ``*ForCausalLM`` (Llama family) plus its tokenizer and source.

    The weights are the single source of truth for sizes: :meth:`layer_spec` reads
    them, so a stage may resize any layer's modules and the handle stays consistent.
    """

    def __init__(self, model: Any, tokenizer: Any, source: ModelSource) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.source = source
        # Set by a quantize stage: what was quantized and how (scheme, bits, group size, algorithm).
        # The weights then hold the dequantized values; exporters that understand the scheme
        # (e.g. vLLM through compressed-tensors) write the real integer format from it.
        self.quantization: dict[str, Any] | None = None

    @property
    def config(self) -> Any:
        """The HF config (kept in sync by :meth:`sync_config`)."""
        return self.model.config

    @property
    def layers(self) -> nn.ModuleList:
        """The decoder layers."""
        return self.model.model.layers

    @property
    def num_layers(self) -> int:
        """Number of decoder layers."""
        return len(self.layers)

    @property
    def hidden_size(self) -> int:
        """Width of the residual stream."""
        return int(self.config.hidden_size)

    @property
    def head_dim(self) -> int:
        """Size of one attention head."""
        return int(getattr(self.config, "head_dim", None) or self.hidden_size // self.config.num_attention_heads)

    def linears(self, index: int) -> dict[str, nn.Linear]:
        """Return the linear modules of layer ``index`` by short name (q_proj … down_proj)."""
        layer = self.layers[index]
        found = {}
        for name, module in layer.named_modules():
            short = name.rsplit(".", 1)[-1]
            if isinstance(module, nn.Linear) and short in LINEAR_NAMES:
                found[short] = module
        return found

    def layer_spec(self, index: int) -> LayerSpec:
        """Read layer ``index``'s sizes from its weights."""
        lin = self.linears(index)
        hd = self.head_dim
        heads = lin["q_proj"].out_features // hd if "q_proj" in lin else 0
        kv = lin["k_proj"].out_features // hd if "k_proj" in lin else 0
        ffn = lin["gate_proj"].out_features if "gate_proj" in lin else 0
        return LayerSpec(index, heads, kv, hd, ffn)

    def layer_specs(self) -> list[LayerSpec]:
        """Return every layer's sizes."""
        return [self.layer_spec(i) for i in range(self.num_layers)]

    def is_uniform(self) -> bool:
        """True when every layer has the same head counts and FFN width."""
        shapes = {(s.num_heads, s.num_kv_heads, s.intermediate_size) for s in self.layer_specs()}
        return len(shapes) <= 1

    def num_parameters(self) -> int:
        """Count unique parameters (tied embeddings once)."""
        seen = {id(p): p.numel() for p in self.model.parameters()}
        return int(sum(seen.values()))

    def decoder_linear_parameters(self) -> int:
        """Count the parameters in the decoder layers' linear modules."""
        return int(sum(m.weight.numel() for i in range(self.num_layers) for m in self.linears(i).values()))

    def drop_layers(self, indices: list[int] | set[int]) -> None:
        """Remove decoder layers and renumber the rest, so that the model really gets shorter."""
        drop = set(indices)
        bad = [i for i in drop if not 0 <= i < self.num_layers]
        if bad:
            raise ValueError(f"layer indices {sorted(bad)} out of range 0..{self.num_layers - 1}")
        if len(drop) >= self.num_layers:
            raise ValueError("cannot drop every layer")
        keep = [layer for i, layer in enumerate(self.layers) if i not in drop]
        self.model.model.layers = nn.ModuleList(keep)
        for new_index, layer in enumerate(keep):
            attn = getattr(layer, "self_attn", None)
            if attn is not None and hasattr(attn, "layer_idx"):
                attn.layer_idx = new_index
            if hasattr(layer, "layer_idx"):
                layer.layer_idx = new_index
        layer_types = getattr(self.config, "layer_types", None)
        if isinstance(layer_types, list) and len(layer_types) == len(keep) + len(drop):
            self.config.layer_types = [t for i, t in enumerate(layer_types) if i not in drop]
        self.config.num_hidden_layers = len(keep)

    def sync_config(self) -> None:
        """Write the weights' sizes into the config when they are uniform (stock HF loadable)."""
        specs = self.layer_specs()
        if not specs or not self.is_uniform():
            return
        s = specs[0]
        self.config.num_hidden_layers = len(specs)
        self.config.intermediate_size = s.intermediate_size
        self.config.num_attention_heads = s.num_heads
        self.config.num_key_value_heads = s.num_kv_heads
        self.config.head_dim = s.head_dim
        for layer in self.layers:
            attn = getattr(layer, "self_attn", None)
            if attn is not None and hasattr(attn, "num_key_value_groups") and s.num_kv_heads:
                attn.num_key_value_groups = s.num_heads // s.num_kv_heads

    def save_hf(self, dest: Path, dtype: torch.dtype | None = None) -> None:
        """Save as a stock HF safetensors directory (config, weights, tokenizer, generation config)."""
        if not self.is_uniform():
            from compressor.errors import ExportError

            raise ExportError("this model's layers differ in size, so it has no stock HF config",
                              hint="export it with a format that supports per-layer sizes")
        self.sync_config()
        model = self.model
        quantizer = getattr(model, "hf_quantizer", None)
        method = str(getattr(getattr(quantizer, "quantization_config", None), "quant_method", "")).lower()
        if quantizer is not None and "gguf" in method:  # GGUF weights are already dequantized; drop the marker
            quantizer.remove_quantization_config(model)
        original_dtype = next(model.parameters()).dtype
        if dtype is not None and dtype != original_dtype:
            model.to(dtype)
        try:
            model.save_pretrained(dest, safe_serialization=True)
        finally:
            if dtype is not None and dtype != original_dtype:
                model.to(original_dtype)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(dest)

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Run a forward pass and return logits (no cache)."""
        device = next(self.model.parameters()).device
        return self.model(input_ids.to(device), use_cache=False).logits
