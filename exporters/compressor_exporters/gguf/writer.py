"""Write a ModelHandle as a GGUF file with the `gguf` package: `llama` when uniform, `deci` per layer.

llama.cpp's `llama` arch reads one size for every layer. A model whose layers differ in FFN width or
head counts goes out as `deci`, whose loader and graph read `n_ff(i)`, `n_head(i)`, `n_head_kv(i)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from compressor.api import ExportError, ModelHandle, steps
from compressor_exporters.gguf.tensors import EncodedTensor, encode_tensor, permute_for_norm_rope, tensor_layout
from compressor_exporters.gguf.tokenizer import add_dummy_tokenizer, add_hf_tokenizer, copy_tokenizer_from_gguf

TokenizerMode = Literal["auto", "source", "hf", "none"]
# A `deci` layer with attention but n_ff == 0 skips its own residual update in llama.cpp (it `continue`s
# before `inpL = cur`), so its attention output would be lost. Such a layer gets an all-zero FFN of
# this width instead: SiLU(0)*0 = 0 adds nothing, and 32 is the smallest width every quant type takes.
ZERO_FFN_WIDTH = 32
SUPPORTED_ACTIVATIONS = {"silu"}
# llama.cpp's own architecture for each transformers model type (its converter writes Mistral as `llama`)
NATIVE_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}
# these rotate the two halves of each head (NEOX RoPE), as transformers does: q/k are written unpermuted
NEOX_ARCHS = {"qwen2", "qwen3"}


@dataclass(frozen=True)
class GgufLayer:
    """Sizes one layer is written with (after the zero-FFN / zero-attention stand-ins)."""

    index: int
    heads: int
    kv_heads: int
    ffn: int
    zero_attention: bool = False
    zero_ffn: bool = False


def plan_layers(model: ModelHandle) -> tuple[str, list[GgufLayer]]:
    """Choose the arch and each layer's written sizes; raise ExportError for what llama.cpp cannot run."""
    out = []
    for spec in model.layer_specs():
        heads, kv, ffn = spec.num_heads, spec.num_kv_heads, spec.intermediate_size
        zero_attn = zero_ffn = False
        if heads > 0 and kv == 0:
            raise ExportError(f"layer {spec.index} has {heads} query heads but no key/value heads",
                              hint="prune key/value heads together with their query heads")
        if heads and heads % kv:
            raise ExportError(f"layer {spec.index} has {heads} query heads, not a multiple of its {kv} KV heads",
                              hint="keep the query heads a multiple of the KV heads (grouped-query attention)")
        if spec.index == 0 and heads == 0:
            # deci derives head size and RoPE from layer 0's head count; a zero attention block keeps them.
            heads, kv, zero_attn = 1, 1, True
        if ffn == 0 and heads > 0:
            ffn, zero_ffn = ZERO_FFN_WIDTH, True
        out.append(GgufLayer(spec.index, heads, kv, ffn, zero_attn, zero_ffn))
    shapes = {(s.heads, s.kv_heads, s.ffn) for s in out}
    plain = len(shapes) == 1 and all(s.heads > 0 and s.ffn > 0 and not (s.zero_attention or s.zero_ffn)
                                     for s in out)
    native = native_arch(model)
    if plain:
        return native, out
    if native != "llama":
        # `deci` (per-layer sizes) has Llama's interleaved RoPE and no q/k norms. llama.cpp reads the
        # per-layer arrays for qwen2/qwen3 but sizes their tensors from one width (tried, with
        # llama-cpp-python 0.3.36: "check_tensor_dims: tensor 'blk.1.ffn_gate.weight' has wrong shape")
        raise ExportError(f"this {getattr(model.config, 'model_type', '?')} model's layers differ in size, which "
                          f"the GGUF writer can express only for Llama and Mistral (llama.cpp's `deci`)",
                          hint="keep the layers uniform (drop whole layers, or width-prune every layer alike), "
                               "or export onnx")
    return "deci", out


def sliding_window(config: Any) -> int | None:
    """The attention window when it is shorter than the model's context, else None (full attention)."""
    window = getattr(config, "sliding_window", None)
    if getattr(config, "model_type", "") in ("qwen2", "qwen3") and not getattr(config, "use_sliding_window", False):
        return None
    context = int(getattr(config, "max_position_embeddings", 0) or 0)
    return int(window) if window and (not context or int(window) < context) else None


def native_arch(model: ModelHandle) -> str:
    """llama.cpp's architecture for this model's family."""
    model_type = getattr(model.config, "model_type", "llama")
    if model_type not in NATIVE_ARCH:
        raise ExportError(f"the GGUF writer has no llama.cpp architecture for model type {model_type!r}",
                          hint=f"supported: {', '.join(sorted(NATIVE_ARCH))}")
    return NATIVE_ARCH[model_type]


def check_supported(model: ModelHandle) -> None:
    """Raise ExportError when the model uses something the GGUF writer does not express."""
    cfg = model.config
    act = getattr(cfg, "hidden_act", "silu")
    if act not in SUPPORTED_ACTIVATIONS:
        raise ExportError(f"activation {act!r} is not supported by the GGUF writer (llama/deci use SiLU)",
                          hint="export a Llama-family model with SiLU gated FFNs")
    rope = rope_parameters(cfg)
    if rope.get("rope_type", "default") not in ("default", "llama3", "linear"):
        raise ExportError(f"RoPE scaling {rope.get('rope_type')!r} is not supported by the GGUF writer",
                          hint="supported: no scaling, 'linear' and 'llama3'")
    plan_layers(model)


def rope_parameters(cfg: Any) -> dict[str, Any]:
    """RoPE settings from a transformers 5 (`rope_parameters`) or 4 (`rope_theta`, `rope_scaling`) config."""
    params = dict(getattr(cfg, "rope_parameters", None) or {})
    if not params:
        params = dict(getattr(cfg, "rope_scaling", None) or {})
        params.setdefault("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    if "type" in params and "rope_type" not in params:
        params["rope_type"] = params["type"]
    return params


def llama3_rope_factors(params: dict[str, Any], head_dim: int) -> np.ndarray:
    """Per-frequency divisors of Llama-3 RoPE scaling, as llama.cpp's `rope_freqs` tensor holds them."""
    base = float(params["rope_theta"])
    factor = float(params.get("factor", 8.0))
    low = float(params.get("low_freq_factor", 1.0))
    high = float(params.get("high_freq_factor", 4.0))
    old_ctx = float(params.get("original_max_position_embeddings", 8192))
    inv_freq = 1.0 / base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * math.pi / inv_freq
    smooth = (old_ctx / wavelen - low) / (high - low)
    divisor = np.where(wavelen < old_ctx / high, 1.0,
                       np.where(wavelen > old_ctx / low, factor, 1.0 / ((1 - smooth) / factor + smooth)))
    return divisor.astype(np.float32)


def _np(t: Any) -> np.ndarray:
    """``t`` as float32 numpy; read-only, since for a float32 CPU tensor it is the model's own memory."""
    array = t.detach().to("cpu").float().numpy()
    array.flags.writeable = False  # an in-place edit further down would change the model; make it raise
    return array


def _tied(model: ModelHandle) -> bool:
    head = model.model.get_output_embeddings()
    embed = model.model.get_input_embeddings()
    if head is None or head.weight is embed.weight:
        return True
    if head.weight.is_meta or embed.weight.is_meta:  # weights on disk: the config says whether they are one
        return bool(getattr(model.config, "tie_word_embeddings", False))
    if head.weight.data_ptr() == embed.weight.data_ptr():
        return True
    return head.weight.shape == embed.weight.shape and bool((head.weight == embed.weight).all())


Transform = Callable[[np.ndarray], np.ndarray]
CHUNK_BYTES = 16 * 2**20  # float32 bytes of one block of rows encoded at a time when streaming


class _TensorSink:
    """Encodes tensors into a writer and remembers the type each one was written in.

    ``memory`` hands every encoded tensor to the writer, which holds them all until the file is
    written. A model whose weights live on disk goes through twice instead: ``plan`` declares
    each tensor's layout from its shape alone, then ``stream`` reads, encodes and writes each
    tensor in blocks of rows, so no more than one tensor's block is in memory.
    """

    def __init__(self, writer: Any, outtype: str, mode: str = "memory", model: ModelHandle | None = None) -> None:
        self.writer = writer
        self.outtype = outtype
        self.mode = mode
        self.types: dict[str, str] = {}
        self.fallbacks: list[str] = []
        self.store = None
        self.names: dict[int, str] = {}
        if model is not None:
            from compressor.api import store_of

            self.store = store_of(model.model)
            self.names = {id(p): n for n, p in model.model.named_parameters(remove_duplicate=False)}

    def add(self, name: str, value: Any, outtype: str | None = None, transform: Transform | None = None) -> None:
        """Write ``value`` (an array, or a model tensor, possibly on disk) as ``name``, after ``transform``."""
        type_name = outtype or self.outtype
        if self.mode == "plan":
            layout = tensor_layout(tuple(int(d) for d in value.shape), type_name)
            self.writer.add_tensor_info(name, layout.shape, layout.dtype, layout.nbytes, raw_dtype=layout.raw_dtype)
            self._record(name, layout.type_name, layout.fell_back)
        elif self.mode == "stream":
            self._stream(name, value, type_name, transform)
        else:
            array = value if isinstance(value, np.ndarray) else _np(value)
            enc: EncodedTensor = encode_tensor(transform(array) if transform else array, type_name)
            if enc.raw_dtype is None:
                self.writer.add_tensor(name, enc.data)
            else:
                self.writer.add_tensor(name, enc.data, raw_dtype=enc.raw_dtype)  # uint8 blocks; shape derived
            self._record(name, enc.type_name, enc.fell_back)

    def _record(self, name: str, type_name: str, fell_back: bool) -> None:
        self.types[name] = type_name
        if fell_back:
            self.fallbacks.append(name)

    def _rows(self, value: Any, start: int, stop: int) -> np.ndarray:
        if isinstance(value, np.ndarray):
            return value[start:stop]
        if value.is_meta:
            assert self.store is not None, "a tensor on the meta device needs the model's store"
            return _np(self.store.read_rows(self.names[id(value)], start, stop))
        return _np(value[start:stop])

    def _stream(self, name: str, value: Any, type_name: str, transform: Transform | None) -> None:
        """Write one tensor's data in blocks of rows, in the order ``plan`` declared it."""
        rows = int(value.shape[0])
        if transform is not None or len(value.shape) < 2:
            blocks = [(0, rows)]  # a row reordering needs the whole tensor; these are a layer's q/k at most
        else:
            step = max(1, CHUNK_BYTES // (4 * int(np.prod(value.shape[1:]))))
            blocks = [(a, min(a + step, rows)) for a in range(0, rows, step)]
        writer = self.writer
        fout = writer.fout[0]
        info = writer.tensors[0].pop(name)  # GGUFWriter keeps the declared tensors in file order
        writer.write_padding(fout, fout.tell())
        written = 0
        for start, stop in blocks:
            array = self._rows(value, start, stop)
            enc = encode_tensor(transform(array) if transform else array, type_name)
            enc.data.tofile(fout)
            written += enc.data.nbytes
        if written != info.nbytes:
            raise ExportError(f"GGUF tensor {name} wrote {written} bytes where {info.nbytes} were declared",
                              hint="this is a bug in the GGUF writer; report it")
        writer.write_padding(fout, written)


def _add_layer(sink: _TensorSink, model: ModelHandle, layer: GgufLayer, hidden: int, head_dim: int,
               arch: str) -> None:
    blk = f"blk.{layer.index}"
    module = model.layers[layer.index]
    lin = model.linears(layer.index)
    if layer.zero_attention:
        sink.add(f"{blk}.attn_norm.weight", np.ones(hidden, np.float32))
        for short, rows in (("attn_q", head_dim), ("attn_k", head_dim), ("attn_v", head_dim)):
            sink.add(f"{blk}.{short}.weight", np.zeros((rows, hidden), np.float32))
        sink.add(f"{blk}.attn_output.weight", np.zeros((hidden, head_dim), np.float32))
    elif layer.heads > 0:
        sink.add(f"{blk}.attn_norm.weight", module.input_layernorm.weight)
        q, k = lin["q_proj"], lin["k_proj"]
        # llama/deci rotate interleaved pairs, transformers rotates halves: their q/k rows are permuted
        # (weights and biases alike); the NEOX archs rotate halves too and take them as they are
        q_rows = k_rows = None
        if arch not in NEOX_ARCHS:
            def q_rows(a: np.ndarray) -> np.ndarray:
                return permute_for_norm_rope(a, layer.heads)

            def k_rows(a: np.ndarray) -> np.ndarray:
                return permute_for_norm_rope(a, layer.kv_heads)
        sink.add(f"{blk}.attn_q.weight", q.weight, transform=q_rows)
        sink.add(f"{blk}.attn_k.weight", k.weight, transform=k_rows)
        sink.add(f"{blk}.attn_v.weight", lin["v_proj"].weight)
        sink.add(f"{blk}.attn_output.weight", lin["o_proj"].weight)
        if q.bias is not None:
            sink.add(f"{blk}.attn_q.bias", q.bias, transform=q_rows)
        if k.bias is not None:
            sink.add(f"{blk}.attn_k.bias", k.bias, transform=k_rows)
        attn = module.self_attn
        for norm, dst in (("q_norm", "attn_q_norm"), ("k_norm", "attn_k_norm")):  # Qwen3: one per head size
            if getattr(attn, norm, None) is not None:
                sink.add(f"{blk}.{dst}.weight", getattr(attn, norm).weight)
        for src, dst in (("v_proj", "attn_v"), ("o_proj", "attn_output")):
            if lin[src].bias is not None:
                sink.add(f"{blk}.{dst}.bias", lin[src].bias)
    if layer.zero_ffn:
        sink.add(f"{blk}.ffn_norm.weight", np.ones(hidden, np.float32))
        sink.add(f"{blk}.ffn_gate.weight", np.zeros((layer.ffn, hidden), np.float32))
        sink.add(f"{blk}.ffn_up.weight", np.zeros((layer.ffn, hidden), np.float32))
        sink.add(f"{blk}.ffn_down.weight", np.zeros((hidden, layer.ffn), np.float32))
    elif layer.ffn > 0:
        sink.add(f"{blk}.ffn_norm.weight", module.post_attention_layernorm.weight)
        for src, dst in (("gate_proj", "ffn_gate"), ("up_proj", "ffn_up"), ("down_proj", "ffn_down")):
            sink.add(f"{blk}.{dst}.weight", lin[src].weight)
            if lin[src].bias is not None:
                sink.add(f"{blk}.{dst}.bias", lin[src].bias)


def _add_hparams(writer: Any, model: ModelHandle, arch: str, layers: list[GgufLayer], name: str) -> dict[str, Any]:
    import gguf

    cfg = model.config
    head_dim = model.head_dim
    rope = rope_parameters(cfg)
    writer.add_name(name)
    writer.add_block_count(len(layers))
    # llama.cpp has no sliding window for these archs: within the window full attention is the same, so
    # the context the file declares is capped there rather than promising lengths it would get wrong
    window = sliding_window(cfg)
    context = int(getattr(cfg, "max_position_embeddings", 2048))
    writer.add_context_length(min(context, window) if window else context)
    writer.add_embedding_length(model.hidden_size)
    if len({(s.heads, s.kv_heads, s.ffn) for s in layers}) == 1 and arch != "deci":
        writer.add_feed_forward_length(layers[0].ffn)
        writer.add_head_count(layers[0].heads)
        writer.add_head_count_kv(layers[0].kv_heads)
    else:
        writer.add_feed_forward_length([s.ffn for s in layers])
        writer.add_head_count([s.heads for s in layers])
        writer.add_head_count_kv([s.kv_heads for s in layers])
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)  # llama/deci require n_rot == key_length
    writer.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(getattr(cfg, "rms_norm_eps", 1e-5)))
    writer.add_vocab_size(int(model.model.get_input_embeddings().weight.shape[0]))
    if rope.get("rope_type") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    return {"rope_theta": float(rope.get("rope_theta", 10000.0)), "rope_type": rope.get("rope_type", "default"),
            "context_length": min(context, window) if window else context, "sliding_window_capped": window}


def _add_tokenizer(writer: Any, model: ModelHandle, mode: TokenizerMode, n_vocab: int) -> dict[str, Any]:
    source = model.source
    from_gguf = source.kind in ("builtin", "gguf") and Path(source.path).is_file()
    if mode == "none" or (mode == "auto" and model.tokenizer is None and not from_gguf):
        return add_dummy_tokenizer(writer, n_vocab)
    if mode == "source" or (mode == "auto" and from_gguf):
        if not from_gguf:
            raise ExportError("tokenizer=source needs a model loaded from a GGUF file",
                              hint="use tokenizer=auto or tokenizer=hf for models loaded from HF directories")
        return copy_tokenizer_from_gguf(writer, Path(source.path), n_vocab)
    if model.tokenizer is None:
        raise ExportError("tokenizer=hf but the model has no tokenizer", hint="use tokenizer=none")
    add_bos = getattr(model.tokenizer, "add_bos_token", None)
    return add_hf_tokenizer(writer, model.tokenizer, n_vocab, add_bos if isinstance(add_bos, bool) else None)


def write_gguf(model: ModelHandle, path: Path, outtype: str, tokenizer: TokenizerMode = "auto",
               name: str | None = None) -> dict[str, Any]:
    """Write ``model`` to ``path`` in ``outtype`` (F32/F16/BF16/Q8_0/Q4_0/…); return what was written."""
    import gguf

    check_supported(model)
    arch, layers = plan_layers(model)
    hidden, head_dim = model.hidden_size, model.head_dim
    embed = model.model.get_input_embeddings().weight
    n_vocab = int(embed.shape[0])
    writer = gguf.GGUFWriter(str(path), arch)
    details: dict[str, Any] = {"arch": arch, "outtype": outtype, "layers": len(layers)}
    details.update(_add_hparams(writer, model, arch, layers, name or model.source.ref))
    details.update(_add_tokenizer(writer, model, tokenizer, n_vocab))
    file_type = getattr(gguf.LlamaFileType, "ALL_F32" if outtype == "F32" else f"MOSTLY_{outtype}")
    writer.add_file_type(int(file_type))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    tied = _tied(model)

    def add_tensors(sink: _TensorSink) -> None:
        sink.add("token_embd.weight", embed)
        rope = rope_parameters(model.config)
        if rope.get("rope_type") == "llama3":
            sink.add("rope_freqs.weight", llama3_rope_factors(rope, head_dim), "F32")
        for layer in (layers if sink.mode == "plan" else steps(layers, "gguf: layers")):
            _add_layer(sink, model, layer, hidden, head_dim, arch)
        sink.add("output_norm.weight", model.model.model.norm.weight)
        if not tied:  # tied models omit output.weight: llama.cpp then reuses token_embd
            sink.add("output.weight", model.model.get_output_embeddings().weight)

    from compressor.api import is_offloaded

    if is_offloaded(model.model):  # weights on disk: declare, then stream
        sink = _TensorSink(writer, outtype, "plan", model)
        add_tensors(sink)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        add_tensors(_TensorSink(writer, outtype, "stream", model))
        details["streamed"] = True
    else:
        sink = _TensorSink(writer, outtype)
        add_tensors(sink)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    writer.close()
    counts: dict[str, int] = {}
    for t in sink.types.values():
        counts[t] = counts.get(t, 0) + 1
    details.update({
        "tied_embeddings": tied, "tensors": len(sink.types), "tensor_types": counts,
        "fallback_tensors": sink.fallbacks,
        "layer_sizes": [{"heads": s.heads, "kv_heads": s.kv_heads, "ffn": s.ffn} for s in layers]
        if len({(s.heads, s.kv_heads, s.ffn) for s in layers}) > 1 else None,
        "zero_ffn_layers": [s.index for s in layers if s.zero_ffn],
        "zero_attention_layers": [s.index for s in layers if s.zero_attention],
        "attention_free_layers": [s.index for s in layers if s.heads == 0],
    })
    return details
