"""Write a model whose layers differ in size as a DeciLM / Nemotron-NAS directory for vLLM.

vLLM's ``DeciLMForCausalLM`` (``vllm/model_executor/models/nemotron_nas.py``) builds each
layer from ``config.block_configs[i]``: attention with ``num_attention_heads //
n_heads_in_group`` KV heads or none (``no_op``), and an FFN of exactly
``intermediate_size`` neurons or none. The query-head count stays global, so a layer with
fewer query heads can only be written zero-padded (``pad_query_heads``), which saves no time.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor.api import BlockConfig, DECILM_ARCHITECTURE, DECILM_MODEL_TYPE, ExportError, LayerSpec, ModelHandle

CONFIG_CODE = Path(__file__).with_name("decilm_config.py")
CONFIG_CODE_NAME = "configuration_decilm.py"  # shipped for `vllm serve --trust-remote-code` without compressor
WEIGHTS_NAME = "model.safetensors"
SUPPORTED_MODEL_TYPES = ("llama",)
PAD_NOTE = ("zero-padded query heads are computed like real ones: these layers' attention is no faster "
            "than before their query heads were pruned")


@dataclass
class DeciPlan:
    """How a ModelHandle maps onto DeciLM: global heads, one block per layer, padded layers."""

    heads: int
    head_dim: int
    blocks: list[BlockConfig]
    # layer -> (real query heads, KV heads) for layers written with zero query heads added
    padded: dict[int, tuple[int, int]] = field(default_factory=dict)


def _has_parameters(module: nn.Module | None) -> bool:
    return module is not None and any(True for _ in module.parameters())


def _attention_block(spec: LayerSpec, heads: int, pad: bool) -> tuple[BlockConfig | None, str | None]:
    """The attention half of a layer's block, or why it cannot be written."""
    if spec.num_heads == 0:
        return BlockConfig(True, 0, False, 0), None
    kv = spec.num_kv_heads
    if kv == 0 or spec.num_heads % kv:
        return None, f"layer {spec.index}: {spec.num_heads} query heads cannot be grouped over {kv} KV heads"
    if spec.num_heads != heads and not pad:
        return None, "query"
    if heads % kv:
        return None, (f"layer {spec.index}: {kv} KV heads do not divide the {heads} global query heads, "
                      f"even with padding")
    return BlockConfig(False, heads // kv, False, 0), None


def plan_decilm(model: ModelHandle, pad_query_heads: bool = False) -> DeciPlan:
    """Work out each layer's DeciLM block; raise :class:`ExportError` for what DeciLM cannot express."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ExportError(f"per-layer sizes are written as DeciLM, a Llama variant; this is a {model_type!r} model",
                          hint="use a Llama-architecture model, or the gguf/onnx exporters")
    specs = model.layer_specs()
    if not specs or specs[0].num_heads == 0:
        raise ExportError("layer 0 has no attention, but vLLM's DeciLM needs attention in layer 0 "
                          "(its first layer starts the residual stream there)",
                          hint="keep layer 0's attention (prune attention in later layers only)")
    heads = max(s.num_heads for s in specs)
    blocks, fewer, errors = [], [], []
    for spec in specs:
        layer = model.layers[spec.index]
        if spec.num_heads == 0 and _has_parameters(getattr(layer, "self_attn", None)):
            errors.append(f"layer {spec.index}: attention has weights but no q_proj")
        if spec.intermediate_size == 0 and _has_parameters(getattr(layer, "mlp", None)):
            errors.append(f"layer {spec.index}: FFN has weights but no gate_proj")
        att, why = _attention_block(spec, heads, pad_query_heads)
        if why == "query":
            fewer.append(spec)
        elif why:
            errors.append(why)
        if att is None:
            continue
        no_ffn = spec.intermediate_size == 0
        blocks.append(BlockConfig(att.attention_no_op, att.n_heads_in_group, no_ffn, spec.intermediate_size))
    if fewer:
        listed = ", ".join(f"{s.index} ({s.num_heads})" for s in fewer[:8]) + (" ..." if len(fewer) > 8 else "")
        raise ExportError(f"DeciLM keeps the query-head count global ({heads}), but layers {listed} have fewer "
                          "query heads; vLLM cannot run them narrower",
                          hint="set the vllm exporter option `pad_query_heads: true` to write them zero-padded "
                               "(correct, but no faster), or prune only FFN neurons / KV heads per layer")
    if errors:
        raise ExportError("this model cannot be written as DeciLM: " + "; ".join(errors[:6]),
                          hint="per-layer pruning must remove whole heads/KV groups or FFN neurons")
    padded = {s.index: (s.num_heads, s.num_kv_heads) for s in specs if 0 < s.num_heads < heads}
    return DeciPlan(heads, model.head_dim, blocks, padded)


def pad_query_rows(weight: torch.Tensor, kv: int, real: int, total: int, head_dim: int) -> torch.Tensor:
    """q_proj weight [real*hd, in] -> [total*hd, in]: each KV group's heads first, then zero heads."""
    per, per_total = real // kv, total // kv
    w = weight.reshape(kv, per, head_dim, *weight.shape[1:])
    out = w.new_zeros(kv, per_total, head_dim, *weight.shape[1:])
    out[:, :per] = w
    return out.reshape(total * head_dim, *weight.shape[1:])


def pad_output_columns(weight: torch.Tensor, kv: int, real: int, total: int, head_dim: int) -> torch.Tensor:
    """o_proj weight [out, real*hd] -> [out, total*hd], zero columns where :func:`pad_query_rows` adds heads."""
    return pad_query_rows(weight.t(), kv, real, total, head_dim).t()


def _skipped(name: str, plan: DeciPlan, tied: bool) -> bool:
    if "rotary_emb" in name or (tied and name == "lm_head.weight"):
        return True
    parts = name.split(".")
    if len(parts) < 4 or parts[:2] != ["model", "layers"]:
        return False
    block = plan.blocks[int(parts[2])]
    if block.attention_no_op and parts[3] in ("self_attn", "input_layernorm"):
        return True
    return block.ffn_no_op and parts[3] in ("mlp", "post_attention_layernorm")


def decilm_tensors(model: ModelHandle, plan: DeciPlan, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors: only the weights that exist, query heads padded where planned."""
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    out: dict[str, torch.Tensor] = {}
    for name, tensor in model.model.state_dict().items():
        if _skipped(name, plan, tied):
            continue
        t = tensor.detach().to("cpu", dtype)
        parts = name.split(".")
        if len(parts) >= 5 and parts[:2] == ["model", "layers"] and int(parts[2]) in plan.padded:
            real, kv = plan.padded[int(parts[2])]
            if parts[4] == "q_proj":
                t = pad_query_rows(t, kv, real, plan.heads, plan.head_dim)
            elif parts[4] == "o_proj" and parts[-1] == "weight":
                t = pad_output_columns(t, kv, real, plan.heads, plan.head_dim)
        out[name] = t.contiguous()
    return out


def decilm_config(model: ModelHandle, plan: DeciPlan, dtype: str) -> dict[str, Any]:
    """config.json: the model's Llama config plus DeciLM's architecture, model type and block_configs."""
    config = model.config.to_dict()
    for key in ("quantization_config", "layer_types", "_name_or_path", "torch_dtype"):
        config.pop(key, None)
    attn = [b for b in plan.blocks if not b.attention_no_op]
    widths = [b.intermediate_size for b in plan.blocks if not b.ffn_no_op]
    config.update({
        "architectures": [DECILM_ARCHITECTURE],
        "model_type": DECILM_MODEL_TYPE,
        "auto_map": {"AutoConfig": CONFIG_CODE_NAME.removesuffix(".py") + ".DeciLMConfig"},
        "num_hidden_layers": len(plan.blocks),
        "num_attention_heads": plan.heads,
        "head_dim": plan.head_dim,
        # informative only: DeciLM reads the sizes from block_configs
        "num_key_value_heads": plan.heads // attn[0].n_heads_in_group,
        "intermediate_size": max(widths) if widths else 0,
        "block_configs": [b.to_json() for b in plan.blocks],
        "dtype": dtype,
    })
    return config


def write_decilm_dir(model: ModelHandle, dest: Path, dtype: str, pad_query_heads: bool = False) -> dict[str, Any]:
    """Write ``model`` as a DeciLM directory (config, safetensors, config code, tokenizer); return details."""
    from safetensors.torch import save_file

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    plan = plan_decilm(model, pad_query_heads)
    tensors = decilm_tensors(model, plan, getattr(torch, dtype))
    save_file(tensors, str(dest / WEIGHTS_NAME), metadata={"format": "pt"})
    (dest / "config.json").write_text(json.dumps(decilm_config(model, plan, dtype), indent=2, sort_keys=True) + "\n")
    shutil.copyfile(CONFIG_CODE, dest / CONFIG_CODE_NAME)
    generation = getattr(model.model, "generation_config", None)
    if generation is not None:
        generation.save_pretrained(dest)
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(dest)
    details: dict[str, Any] = {
        "format": "decilm (nemotron-nas)", "dtype": dtype, "layers": model.num_layers,
        "parameters": model.num_parameters(), "written_parameters": sum(t.numel() for t in tensors.values()),
        "weight_bytes": (dest / WEIGHTS_NAME).stat().st_size, "files": sorted(f.name for f in dest.iterdir()),
        "tokenizer": model.tokenizer is not None,
        "attention_layers": sum(not b.attention_no_op for b in plan.blocks),
        "ffn_layers": sum(not b.ffn_no_op for b in plan.blocks),
        "kv_heads": [0 if b.attention_no_op else plan.heads // b.n_heads_in_group for b in plan.blocks],
        "ffn_widths": [b.intermediate_size for b in plan.blocks],
    }
    if plan.padded:
        details["padded_query_heads"] = {str(i): {"real": r, "written": plan.heads} for i, (r, _) in
                                         sorted(plan.padded.items())}
        details["padding_note"] = PAD_NOTE
    return details
