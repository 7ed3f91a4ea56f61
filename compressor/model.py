"""The model handle every stage works on: an HF causal LM whose layers may differ in size."""

from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from compressor.safetensors_stream import PendingTensor

LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
HF_MAX_SHARD_SIZE = "50GB"  # transformers' save_pretrained default
HF_WEIGHTS_PATTERN = "model{suffix}.safetensors"
HF_INDEX_NAME = "model.safetensors.index.json"
HF_WEIGHT_FILE = re.compile(r"model(-\d{5}-of-\d{5})?\.safetensors")


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
        # The loaded model's index of each current layer (None: unchanged), for the per-layer report.
        self.layer_origin: list[int] | None = None

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

    def original_layer_indices(self) -> list[int]:
        """The index each current decoder layer had in the loaded model (layer drop renumbers them)."""
        return list(self.layer_origin) if self.layer_origin is not None else list(range(self.num_layers))

    def drop_layers(self, indices: list[int] | set[int]) -> None:
        """Remove decoder layers and renumber the rest, so that the model really gets shorter."""
        drop = set(indices)
        bad = [i for i in drop if not 0 <= i < self.num_layers]
        if bad:
            raise ValueError(f"layer indices {sorted(bad)} out of range 0..{self.num_layers - 1}")
        if len(drop) >= self.num_layers:
            raise ValueError("cannot drop every layer")
        keep = [layer for i, layer in enumerate(self.layers) if i not in drop]
        self.layer_origin = [o for i, o in enumerate(self.original_layer_indices()) if i not in drop]
        from compressor.calibration.offload import store_of

        store = store_of(self.model)
        if store is not None:  # the weights on disk are found by layer number: renumber them too
            kept = [i for i in range(self.num_layers) if i not in drop]
            store.rename_layers({old: new for new, old in enumerate(kept)})
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
        window_layers = getattr(self.config, "max_window_layers", None)
        if isinstance(window_layers, int):  # Qwen2: layers below this index use full attention; keep each one's kind
            self.config.max_window_layers = sum(1 for i in range(len(keep) + len(drop))
                                                if i < window_layers and i not in drop)
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

    def save_hf(self, dest: Path, dtype: torch.dtype | None = None,
                max_shard_size: int | str = HF_MAX_SHARD_SIZE) -> None:
        """Save as a stock HF safetensors directory (config, weights, tokenizer, generation config).

        The model is only read: each shard's tensors are cast to ``dtype`` as copies while it is
        written, and config edits (dtype, a GGUF loader's quantization marker) go on a deep copy.
        """
        if not self.is_uniform():
            from compressor.errors import ExportError

            raise ExportError("this model's layers differ in size, so it has no stock HF config",
                              hint="export it with a format that supports per-layer sizes")
        self.sync_config()
        _write_hf_checkpoint(self.model, Path(dest), dtype, max_shard_size)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(dest)

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Run a forward pass and return logits (no cache)."""
        device = next(self.model.parameters()).device
        return self.model(input_ids.to(device), use_cache=False).logits


def _quant_method(quantization: Any) -> str:
    """The lower-case ``quant_method`` of a quantization config object or dict ('' for none)."""
    if quantization is None:
        return ""
    method = quantization.get("quant_method") if isinstance(quantization, dict) else \
        getattr(quantization, "quant_method", None)
    return str(getattr(method, "value", method) or "").lower()


def _config_to_write(model: Any, dtype: torch.dtype) -> Any:
    """A deep copy of ``model.config`` as it is written: weights' dtype, architecture, no GGUF marker."""
    quantizer = getattr(model, "hf_quantizer", None)
    methods = {_quant_method(getattr(quantizer, "quantization_config", None)),
               _quant_method(getattr(model.config, "quantization_config", None))} - {""}
    if methods - {"gguf"}:
        from compressor.errors import ExportError

        raise ExportError(f"this model is held in a transformers quantized format ({sorted(methods)}), "
                          "which the HF writer does not write", hint="load the model unquantized")
    config = copy.deepcopy(model.config)
    config.dtype = str(dtype).removeprefix("torch.")
    config.architectures = [type(model).__name__]
    if hasattr(config, "quantization_config"):  # a GGUF loader's marker: the weights are already dequantized
        del config.quantization_config
    return config


def _written_tensor(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """The CPU tensor written for ``tensor``: floats in ``dtype`` (a cast makes a new tensor), others as they are."""
    t = tensor.detach()
    if dtype is not None and t.is_floating_point():
        t = t.to("cpu", dtype)
    return t.to("cpu").contiguous()


def _written_bytes(tensor: torch.Tensor, dtype: torch.dtype | None) -> int:
    """Bytes ``tensor`` takes in the file (after the cast), for sharding."""
    cast = dtype is not None and tensor.is_floating_point()
    return tensor.numel() * (dtype.itemsize if cast else tensor.element_size())


def write_hf_config(model: Any, dest: Path, dtype: torch.dtype) -> None:
    """Write an HF model's config.json (weights in ``dtype``) and generation config into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    _config_to_write(model, dtype).save_pretrained(dest)
    if model.can_generate():
        copy.deepcopy(model.generation_config).save_pretrained(dest)  # validating may fill in fields


def _write_hf_checkpoint(model: Any, dest: Path, dtype: torch.dtype | None, max_shard_size: int | str) -> None:
    """Write an HF model's config, generation config and safetensors shards (indexed when sharded) to ``dest``.

    Like ``save_pretrained``, but it only reads ``model``: save_pretrained writes the dtype into the
    live config, and its weights are whatever the model holds, so a cast would have to go on the model.
    """
    from huggingface_hub import split_state_dict_into_shards_factory
    from safetensors.torch import save_file
    from transformers.core_model_loading import revert_weight_conversion
    from transformers.modeling_utils import remove_tied_weights_from_state_dict

    write_hf_config(model, dest, dtype or model.dtype)
    from compressor.calibration.offload import is_offloaded

    if is_offloaded(model):
        _write_offloaded_weights(model, dest, dtype)
        return
    # References to the live tensors, never written to. transformers' own helpers keep each tied
    # weight once (the name from_pretrained expects) and undo any load-time renaming, as save_pretrained does.
    state = model.state_dict()
    for key in getattr(model, "_keys_to_ignore_on_save", None) or ():
        state.pop(key, None)
    state = revert_weight_conversion(model, remove_tied_weights_from_state_dict(state, model))
    split = split_state_dict_into_shards_factory(state, get_storage_size=lambda t: _written_bytes(t, dtype),
                                                 filename_pattern=HF_WEIGHTS_PATTERN, max_shard_size=max_shard_size)
    for old in dest.iterdir():  # shards or an index left by an earlier save would be read with the new ones
        stale = HF_WEIGHT_FILE.fullmatch(old.name) or (old.name == HF_INDEX_NAME and not split.is_sharded)
        if stale and old.name not in split.filename_to_tensors:
            old.unlink()
    for filename, names in split.filename_to_tensors.items():
        save_file({name: _written_tensor(state[name], dtype) for name in names}, str(dest / filename),
                  metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": {"total_parameters": model.num_parameters(), **split.metadata},
                 "weight_map": split.tensor_to_filename}
        (dest / HF_INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


OFFLOADED_SHARD_BYTES = 2 * 10**9  # shards of a streamed checkpoint: the size the hub's own checkpoints use


def offloaded_tensors(model: Any, dtype: torch.dtype | None) -> list[PendingTensor]:
    """Every tensor of a model whose weights live on disk, as it is written (sorted, tied head once, floats in
    ``dtype``); tensors on ``meta`` are read from the store a block of rows at a time."""
    from compressor.calibration.offload import store_of
    from compressor.safetensors_stream import PendingTensor

    store = store_of(model)
    if store is None:
        from compressor.errors import ExportError

        raise ExportError("this model has weights on the meta device but no disk store to read them from",
                          hint="open it with compressor.calibration.open_lazy")
    state = model.state_dict()
    for key in getattr(model, "_keys_to_ignore_on_save", None) or ():
        state.pop(key, None)
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # tied: stored once, as the input embedding

    def pending(name: str, tensor: torch.Tensor) -> PendingTensor:
        written = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
        if tensor.is_meta:
            return PendingTensor(name, tuple(tensor.shape), written,
                                 lambda start, stop: store.read_rows(name, start, stop))
        return PendingTensor.of(name, tensor, written)

    return [pending(name, t) for name, t in sorted(state.items())]


def _write_offloaded_weights(model: Any, dest: Path, dtype: torch.dtype | None) -> None:
    """Write the safetensors shards (and index) of a model whose weights live on disk, one block at a time."""
    from compressor.safetensors_stream import write_sharded

    tensors = offloaded_tensors(model, dtype)
    write_sharded(dest, tensors, OFFLOADED_SHARD_BYTES, {"total_parameters": sum(math.prod(t.shape) for t in tensors)})
