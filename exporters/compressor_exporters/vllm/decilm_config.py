"""A transformers config class for DeciLM / Nemotron-NAS checkpoints (``model_type: nemotron-nas``).

vLLM's ``DeciLMForCausalLM`` reads ``config.block_configs[i].attention.no_op`` and friends
as attributes, but neither transformers nor vLLM ships a config class for this model
type. This file is that class. It is self-contained (it imports only transformers) so
that the `vllm` exporter can also copy it into the artifact as ``configuration_decilm.py``
for ``vllm serve --trust-remote-code`` without compressor installed; compressor itself
registers it with :func:`register` and never runs code from an artifact.
"""

from __future__ import annotations

from typing import Any

from transformers import LlamaConfig

MODEL_TYPE = "nemotron-nas"


class BlockSection(dict):
    """A dict whose keys also read as attributes; a missing key raises AttributeError (so hasattr works)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def as_sections(value: Any) -> Any:
    """Turn nested dicts into :class:`BlockSection` objects (lists are walked), leaving other values alone."""
    if isinstance(value, dict):
        return BlockSection({k: as_sections(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return [as_sections(v) for v in value]
    return value


class DeciLMConfig(LlamaConfig):
    """A Llama config plus ``block_configs``: one ``{"attention": {...}, "ffn": {...}}`` per layer."""

    model_type = MODEL_TYPE

    def __post_init__(self, **kwargs: Any) -> None:
        blocks = kwargs.pop("block_configs", None)
        super().__post_init__(**kwargs)
        if blocks is None:
            blocks = getattr(self, "block_configs", None) or []
        # BlockSection is a dict: to_dict()/to_json_string() and pickling keep working unchanged
        self.block_configs = as_sections(blocks)


def register() -> None:
    """Register :class:`DeciLMConfig` with transformers' AutoConfig for ``model_type: nemotron-nas``."""
    from transformers import AutoConfig

    AutoConfig.register(MODEL_TYPE, DeciLMConfig, exist_ok=True)
