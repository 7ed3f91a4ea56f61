"""genai_config.json for onnxruntime-genai, written when every layer has the same attention shape.

onnxruntime-genai keeps one KV shape (num_key_value_heads, head_size) for all layers, so it can
run our graph only when the attention is uniform; FFN widths may still differ, as the graph
itself carries them. The field set follows onnxruntime-genai's model builder and config reference.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from compressor.api import ModelHandle
from compressor_exporters.onnx.io_spec import DecoderIO

GENAI_FILE = "genai_config.json"


def genai_compatible(model: ModelHandle) -> bool:
    """True when every layer has attention with the same query and KV head counts."""
    heads = {(s.num_heads, s.num_kv_heads) for s in model.layer_specs()}
    return len(heads) == 1 and next(iter(heads))[1] > 0


def genai_config(model: ModelHandle, io: DecoderIO, context_length: int) -> dict[str, Any]:
    """The genai_config.json document for this graph."""
    spec = model.layer_spec(0)
    config = model.config
    eos = io.eos_token_ids[0] if len(io.eos_token_ids) == 1 else io.eos_token_ids
    pad = config.pad_token_id if config.pad_token_id is not None else (io.eos_token_ids or [0])[0]
    return {
        "model": {
            "bos_token_id": config.bos_token_id,
            "context_length": context_length,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": io.model_file,
                "head_size": io.head_dim,
                "hidden_size": model.hidden_size,
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                           "position_ids": "position_ids", "past_key_names": "past_key_values.%d.key",
                           "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
                "num_attention_heads": spec.num_heads,
                "num_hidden_layers": io.num_layers,
                "num_key_value_heads": spec.num_kv_heads,
            },
            "eos_token_id": eos,
            "pad_token_id": pad,
            "type": "llama",
            "vocab_size": io.vocab_size,
        },
        "search": {"diversity_penalty": 0.0, "do_sample": False, "early_stopping": True, "length_penalty": 1.0,
                   "max_length": context_length, "min_length": 0, "no_repeat_ngram_size": 0, "num_beams": 1,
                   "num_return_sequences": 1, "past_present_share_buffer": False, "repetition_penalty": 1.0,
                   "temperature": 1.0, "top_k": 1, "top_p": 1.0},
    }


def write_genai_config(model: ModelHandle, io: DecoderIO, dest: Path) -> Path | None:
    """Write genai_config.json when onnxruntime-genai can run the graph; return its path or None."""
    if not genai_compatible(model):
        return None
    context = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
    path = Path(dest) / GENAI_FILE
    path.write_text(json.dumps(genai_config(model, io, context), indent=4) + "\n")
    return path
