"""The decoder graph's I/O contract: tensor names and per-layer KV shapes, saved beside model.onnx."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from compressor.api import ExportError

IO_FILE = "onnx-io.json"
MODEL_FILE = "model.onnx"
FORMAT_NAME = "compressor-onnx-decoder"
FORMAT_VERSION = 1
PAST_KEY = "past_key_values.{}.key"
PAST_VALUE = "past_key_values.{}.value"
PRESENT_KEY = "present.{}.key"
PRESENT_VALUE = "present.{}.value"
TOKEN_INPUTS = ("input_ids", "attention_mask", "position_ids")
NUMPY_DTYPES = {"float32": "float32", "float16": "float16"}


@dataclass
class DecoderIO:
    """Names and shapes of one decoder graph with a KV cache.

    ``kv_heads[i]`` is layer i's number of KV heads; 0 means the layer has no attention and
    therefore no past/present tensors. Every KV tensor is [batch, kv_heads[i], length, head_dim].
    """

    kv_heads: list[int]
    head_dim: int
    vocab_size: int
    dtype: str = "float32"  # dtype of the KV tensors (and logits)
    model_file: str = MODEL_FILE
    eos_token_ids: list[int] = field(default_factory=list)
    quantization: dict[str, Any] | None = None

    @property
    def num_layers(self) -> int:
        """Decoder layers in the graph (attention-free ones included)."""
        return len(self.kv_heads)

    @property
    def attention_layers(self) -> list[int]:
        """Indices of the layers that hold a KV cache."""
        return [i for i, h in enumerate(self.kv_heads) if h > 0]

    def past_names(self) -> list[str]:
        """Past KV input names in graph order (key, value per attention layer)."""
        return [n for i in self.attention_layers for n in (PAST_KEY.format(i), PAST_VALUE.format(i))]

    def present_names(self) -> list[str]:
        """Present KV output names in graph order, paired with :meth:`past_names`."""
        return [n for i in self.attention_layers for n in (PRESENT_KEY.format(i), PRESENT_VALUE.format(i))]

    def input_names(self) -> list[str]:
        """Every graph input name in order."""
        return [*TOKEN_INPUTS, *self.past_names()]

    def output_names(self) -> list[str]:
        """Every graph output name in order."""
        return ["logits", *self.present_names()]

    def kv_uniform(self) -> bool:
        """True when every layer has attention with the same number of KV heads (what genai supports)."""
        return bool(self.kv_heads) and len(set(self.kv_heads)) == 1 and self.kv_heads[0] > 0

    def to_json(self) -> dict[str, Any]:
        """The JSON document written as onnx-io.json."""
        return {"format": FORMAT_NAME, "version": FORMAT_VERSION, **asdict(self),
                "num_layers": self.num_layers, "inputs": self.input_names(), "outputs": self.output_names(),
                "kv_shape": "[batch, kv_heads[i], past_length, head_dim]",
                "past_key_names": PAST_KEY.replace("{}", "%d"), "past_value_names": PAST_VALUE.replace("{}", "%d"),
                "present_key_names": PRESENT_KEY.replace("{}", "%d"),
                "present_value_names": PRESENT_VALUE.replace("{}", "%d")}

    def save(self, dest: Path) -> Path:
        """Write onnx-io.json into ``dest``."""
        path = Path(dest) / IO_FILE
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, artifact: Path) -> DecoderIO:
        """Read onnx-io.json from an artifact directory."""
        path = Path(artifact) / IO_FILE
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ExportError(f"cannot read the ONNX I/O description {path}: {exc}",
                              hint="point at a directory written by the onnx exporter") from exc
        if doc.get("format") != FORMAT_NAME:
            raise ExportError(f"{path} is not a {FORMAT_NAME} description (format={doc.get('format')!r})",
                              hint="point at a directory written by the onnx exporter")
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in doc.items() if k in names})
