"""Load a DeciLM / Nemotron-NAS directory (per-layer sizes) into a ModelHandle, without remote code.

Such a directory (written by the `vllm` exporter for models whose layers differ in size)
has ``model_type: nemotron-nas`` and one ``block_configs`` entry per layer. Instead of
running the ``*.py`` files a checkpoint may ship, this module reads config.json as plain
JSON, builds a stock ``LlamaForCausalLM`` and resizes each layer's modules to its block:
narrower K/V or FFN linears, and no-op modules for layers without attention or FFN.
The result computes what vLLM's ``DeciLMForCausalLM`` computes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor.errors import ModelLoadError, UnsupportedModelError
from compressor.model import ModelHandle, ModelSource

DECILM_MODEL_TYPE = "nemotron-nas"
DECILM_ARCHITECTURE = "DeciLMForCausalLM"
# keys of a DeciLM config.json that a stock LlamaConfig does not have
DECILM_ONLY_KEYS = ("block_configs", "auto_map", "architectures", "model_type")


class NoOpAttention(nn.Module):
    """Stands in for a removed attention block: adds nothing to the residual stream."""

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
        """Return zeros (and no attention weights), the shape of ``hidden_states``."""
        return torch.zeros_like(hidden_states), None


class NoOpMLP(nn.Module):
    """Stands in for a removed FFN block: adds nothing to the residual stream."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Return zeros the shape of ``hidden_states``."""
        return torch.zeros_like(hidden_states)


@dataclass(frozen=True)
class BlockConfig:
    """One layer of a DeciLM config: ``no_op`` flags, query heads per KV head, exact FFN width."""

    attention_no_op: bool
    n_heads_in_group: int
    ffn_no_op: bool
    intermediate_size: int

    def to_json(self) -> dict[str, Any]:
        """The ``block_configs`` entry vLLM's DeciLMForCausalLM reads."""
        attention: dict[str, Any] = {"no_op": self.attention_no_op}
        if not self.attention_no_op:
            attention["n_heads_in_group"] = self.n_heads_in_group
        ffn: dict[str, Any] = {"no_op": self.ffn_no_op}
        if not self.ffn_no_op:
            ffn["intermediate_size"] = self.intermediate_size
        return {"attention": attention, "ffn": ffn}


def is_decilm_config(config: dict[str, Any]) -> bool:
    """True when a config.json dict describes a DeciLM / Nemotron-NAS model."""
    return config.get("model_type") == DECILM_MODEL_TYPE or DECILM_ARCHITECTURE in (config.get("architectures") or [])


def _ffn_mult_width(mult: float, hidden: int) -> int:
    # DeciLM's own rule for configs that give ffn_mult instead of an exact width
    width = int(2 * mult * hidden / 3)
    return width if width % 256 == 0 else width + 256 - width % 256


def parse_block_configs(config: dict[str, Any], where: str = "config.json") -> list[BlockConfig]:
    """Read and check ``block_configs`` of a DeciLM config dict (one entry per layer)."""
    blocks = config.get("block_configs")
    layers = int(config.get("num_hidden_layers", -1))
    heads = int(config.get("num_attention_heads", 0))
    hint = "the directory must be a DeciLM / nemotron-nas export (e.g. written by `compress export --format vllm`)"
    if not isinstance(blocks, list) or len(blocks) != layers:
        raise ModelLoadError(f"{where}: block_configs must be a list with one entry per layer "
                             f"({layers}), got {type(blocks).__name__}", hint=hint)
    out = []
    for i, b in enumerate(blocks):
        try:
            att, ffn = b["attention"], b["ffn"]
            att_no_op, ffn_no_op = bool(att.get("no_op", False)), bool(ffn.get("no_op", False))
            group = 0 if att_no_op else int(att["n_heads_in_group"])
            if ffn_no_op:
                width = 0
            elif ffn.get("ffn_mult") is not None:
                width = _ffn_mult_width(float(ffn["ffn_mult"]), int(config["hidden_size"]))
            else:
                width = int(ffn["intermediate_size"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModelLoadError(f"{where}: block_configs[{i}] is malformed ({type(exc).__name__}: {exc})",
                                 hint=hint) from exc
        if not att_no_op and (group <= 0 or heads % group):
            raise ModelLoadError(f"{where}: block_configs[{i}].attention.n_heads_in_group={group} does not "
                                 f"divide num_attention_heads={heads}", hint=hint)
        if not ffn_no_op and width <= 0:
            raise ModelLoadError(f"{where}: block_configs[{i}].ffn has width {width}", hint=hint)
        out.append(BlockConfig(att_no_op, group, ffn_no_op, width))
    if out and out[0].attention_no_op:
        raise UnsupportedModelError(f"{where}: layer 0 has no attention, which vLLM's DeciLM cannot run",
                                    hint="layer 0 of a DeciLM model must keep its attention")
    return out


def llama_config_for(config: dict[str, Any], blocks: list[BlockConfig]) -> Any:
    """A stock LlamaConfig sized to the widest layer (the layers are narrowed afterwards)."""
    from transformers import LlamaConfig

    plain = {k: v for k, v in config.items() if k not in DECILM_ONLY_KEYS}
    heads = int(config["num_attention_heads"])
    kv = [heads // b.n_heads_in_group for b in blocks if not b.attention_no_op]
    widths = [b.intermediate_size for b in blocks if not b.ffn_no_op]
    plain["num_key_value_heads"] = max(kv) if kv else heads
    plain["intermediate_size"] = max(widths) if widths else int(config.get("intermediate_size") or 1)
    plain.setdefault("head_dim", int(config["hidden_size"]) // heads)
    return LlamaConfig(**plain)


def make_attention_noop(layer: nn.Module) -> None:
    """Remove layer's attention: a zero-output stand-in and no input norm (as in DeciLM)."""
    layer.self_attn = NoOpAttention()
    layer.input_layernorm = nn.Identity()


def make_ffn_noop(layer: nn.Module) -> None:
    """Remove layer's FFN: a zero-output stand-in and no post-attention norm (as in DeciLM)."""
    layer.mlp = NoOpMLP()
    layer.post_attention_layernorm = nn.Identity()


def _linear(fan_in: int, fan_out: int, like: nn.Linear) -> nn.Linear:
    return nn.Linear(fan_in, fan_out, bias=like.bias is not None, dtype=like.weight.dtype,
                     device=like.weight.device)


def resize_layer(layer: nn.Module, block: BlockConfig, heads: int, head_dim: int) -> None:
    """Give one stock Llama decoder layer the K/V and FFN sizes (or no-ops) of ``block``."""
    if block.attention_no_op:
        make_attention_noop(layer)
    else:
        attn = layer.self_attn
        kv = heads // block.n_heads_in_group
        attn.k_proj = _linear(attn.k_proj.in_features, kv * head_dim, attn.k_proj)
        attn.v_proj = _linear(attn.v_proj.in_features, kv * head_dim, attn.v_proj)
        attn.num_key_value_groups = block.n_heads_in_group
    if block.ffn_no_op:
        make_ffn_noop(layer)
    else:
        mlp = layer.mlp
        hidden = mlp.gate_proj.in_features
        mlp.gate_proj = _linear(hidden, block.intermediate_size, mlp.gate_proj)
        mlp.up_proj = _linear(hidden, block.intermediate_size, mlp.up_proj)
        mlp.down_proj = _linear(block.intermediate_size, hidden, mlp.down_proj)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = block.intermediate_size


def build_decilm_model(config: dict[str, Any], where: str = "config.json") -> Any:
    """A LlamaForCausalLM (float32, random weights) whose layers have the sizes of ``config``'s blocks."""
    from transformers import LlamaForCausalLM

    blocks = parse_block_configs(config, where)
    llama_config = llama_config_for(config, blocks)
    model = LlamaForCausalLM(llama_config)
    heads, head_dim = llama_config.num_attention_heads, llama_config.head_dim
    for layer, block in zip(model.model.layers, blocks, strict=True):
        resize_layer(layer, block, heads, head_dim)
    return model


def read_safetensors(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every ``*.safetensors`` file in ``directory`` (no pickle is ever read)."""
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for f in sorted(Path(directory).glob("*.safetensors")):
        try:
            tensors.update(load_file(str(f)))
        except Exception as exc:  # safetensors raises its own error types for truncated/corrupt files
            raise ModelLoadError(f"could not read {f}: {type(exc).__name__}: {exc}",
                                 hint="the weights file is incomplete or corrupt; export again") from exc
    if not tensors:
        raise ModelLoadError(f"{directory} holds no *.safetensors weights",
                             hint="a DeciLM directory is only read from safetensors files")
    return tensors


def load_decilm_weights(model: Any, tensors: dict[str, torch.Tensor], where: str) -> None:
    """Copy ``tensors`` into ``model``, refusing missing, unexpected or mis-shaped weights."""
    state = model.state_dict()
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    missing = sorted(k for k in state if k not in tensors and not (tied and k == "lm_head.weight"))
    unexpected = sorted(k for k in tensors if k not in state)
    bad = sorted(k for k in tensors if k in state and tuple(tensors[k].shape) != tuple(state[k].shape))
    if missing or unexpected or bad:
        detail = "; ".join(f"{what}: {names[:4]}" for what, names in
                           (("missing", missing), ("unexpected", unexpected), ("wrong shape", bad)) if names)
        raise ModelLoadError(f"{where}: the weights do not match block_configs ({detail})",
                             hint="the directory's config.json and *.safetensors must come from the same export")
    with torch.no_grad():
        for name, tensor in tensors.items():
            # a tied lm_head shares the embedding's parameter, so copying the embedding fills both
            state[name].copy_(tensor.to(state[name].dtype))


def load_decilm_dir(directory: Path | str, dtype: str = "float32", device: str = "cpu",
                    source: ModelSource | None = None) -> ModelHandle:
    """Load a DeciLM directory into a ModelHandle: config as JSON, weights from safetensors, no remote code."""
    directory = Path(directory)
    config_path = directory / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not read {config_path}: {exc}", hint="check the directory") from exc
    if not is_decilm_config(config):
        raise ModelLoadError(f"{config_path} is not a DeciLM config (model_type {config.get('model_type')!r})",
                             hint="load stock Llama directories with compressor.model_loading.load_model")
    model = build_decilm_model(config, str(config_path))
    load_decilm_weights(model, read_safetensors(directory), str(directory))
    model.to(getattr(torch, dtype))
    model.eval()
    model.to(device)
    tokenizer = None
    if (directory / "tokenizer.json").is_file() or (directory / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # it warns that it does not know model_type nemotron-nas: expected
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(directory), trust_remote_code=False)
        finally:
            hf_logging.set_verbosity(level)
    if source is None:
        files = [str(f) for f in sorted(directory.glob("*.safetensors"))] + [str(config_path)]
        source = ModelSource(str(directory), str(directory.resolve()), "hf-dir", files=files)
    return ModelHandle(model, tokenizer, source)
