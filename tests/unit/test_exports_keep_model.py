"""Exporting only reads the model: every exporter leaves every parameter, buffer and config entry as it was.

A build exports one model to several formats in turn, so an exporter that casts the live model
(even "and back": fp32 -> bf16 -> fp32 rounds) changes what every later export writes.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from compressor.api import StageContext
from compressor.model import ModelHandle
from compressor.plugin_manager import load_registry
from compressor.testing import tiny_llama, tiny_tokenizer
from decilm_models import nonuniform_tiny

# (exporter, options, model): each writer behind each exporter, on the kind of model that reaches it
CASES = [
    ("transformers", {"dtype": "float32"}, "plain"),
    ("transformers", {"dtype": "bfloat16"}, "plain"),
    ("transformers", {"dtype": "float16"}, "tied"),
    ("vllm", {"dtype": "bfloat16"}, "plain"),  # stock HF directory
    ("vllm", {"dtype": "bfloat16"}, "rtn"),  # compressed-tensors writer
    ("vllm", {"dtype": "float16"}, "nonuniform"),  # DeciLM writer
    ("onnx", {"dtype": "float32"}, "plain"),
    ("onnx", {"dtype": "float16"}, "tied"),
    ("onnx", {"dtype": "float32", "quantize": "int8"}, "plain"),
    ("gguf", {"outtype": "F16"}, "plain"),
    ("gguf", {"outtype": "Q8_0"}, "tied"),
    ("gguf", {"outtype": "F16"}, "nonuniform"),  # arch deci
    ("gguf", {"outtype": "Q8_0"}, "rtn"),
]
INT_VIEW = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.uint8}


def make_model(kind: str) -> ModelHandle:
    """A fresh tiny model of one kind: plain, tied embeddings, RTN-quantized (W4A16) or per-layer sizes."""
    if kind == "nonuniform":
        return nonuniform_tiny()
    tok = tiny_tokenizer()
    handle = tiny_llama(vocab=len(tok), tokenizer=tok, tie=kind == "tied")
    if kind == "rtn":
        from compressor_methods.quantize import RTN, QuantizeOptions

        RTN().apply(handle, QuantizeOptions(scheme="W4A16"), StageContext(log=lambda s: None))
    return handle


def export(fmt: str, options: dict[str, Any], handle: ModelHandle, dest: Path) -> dict[str, Any]:
    """Export as the build does: the registered exporter's check_model, then export."""
    exporter = load_registry().exporter(fmt)()
    opts = exporter.Options(**options)
    exporter.check_model(handle, opts)
    return exporter.export(handle, dest, opts)


def _bits(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().cpu().contiguous()
    return t.view(INT_VIEW[t.element_size()]).clone() if t.is_floating_point() else t.clone()


def snapshot(handle: ModelHandle) -> dict[str, Any]:
    """Every parameter and buffer (bits, dtype, device, storage), the configs and the quantization state."""
    hf = handle.model
    tensors = {}
    for kind, named in (("parameter", hf.named_parameters(remove_duplicate=False)),
                        ("buffer", hf.named_buffers(remove_duplicate=False))):
        for name, t in named:
            tensors[f"{kind} {name}"] = (t.dtype, t.device, tuple(t.shape), t.data_ptr(), _bits(t))
    for name, module in hf.named_modules():  # the integer parameters the compressed-tensors writer reads
        q = getattr(module, "compressor_quant", None)
        if q is not None:
            tensors[f"quant {name}"] = tuple((t.dtype, _bits(t)) for t in (q.weight_scale, q.weight_zero_point))
    return {"tensors": tensors, "config": hf.config.to_dict(),
            "attn_implementation": hf.config._attn_implementation,
            "generation_config": hf.generation_config.to_dict(), "training": hf.training,
            "hf_quantizer": getattr(hf, "hf_quantizer", None), "quantization": copy.deepcopy(handle.quantization)}


def assert_unchanged(before: dict[str, Any], after: dict[str, Any]) -> None:
    """Every tensor bit for bit (with dtype, device, shape and storage), and everything else equal."""
    assert before["tensors"].keys() == after["tensors"].keys()
    changed = []
    for name, old in before["tensors"].items():
        new = after["tensors"][name]
        if name.startswith("quant "):
            same = all(a[0] == b[0] and torch.equal(a[1], b[1]) for a, b in zip(old, new))
        else:
            same = old[:4] == new[:4] and torch.equal(old[4], new[4])
        if not same:
            changed.append(name)
    assert not changed, f"{len(changed)} tensors changed, e.g. {changed[:5]}"
    for key in ("config", "attn_implementation", "generation_config", "training", "quantization"):
        assert before[key] == after[key], key
    assert before["hf_quantizer"] is after["hf_quantizer"]


def written_weights(dest: Path) -> dict[str, torch.Tensor]:
    """Every tensor in a directory's safetensors files."""
    out: dict[str, torch.Tensor] = {}
    for f in sorted(dest.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Same names, dtypes, shapes and bits."""
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert torch.equal(_bits(a[name]), _bits(b[name])), name


@pytest.mark.parametrize("fmt,options,kind", CASES, ids=[f"{f}-{'-'.join(map(str, o.values()))}-{k}"
                                                          for f, o, k in CASES])
def test_export_leaves_every_parameter_buffer_and_config_entry_unchanged(tmp_path, fmt, options, kind):
    handle = make_model(kind)
    before = snapshot(handle)
    details = export(fmt, options, handle, tmp_path / fmt)
    assert any((tmp_path / fmt).iterdir())
    if kind == "rtn" and fmt == "vllm":
        assert details["format"] == "pack-quantized"  # the compressed-tensors writer ran
    if kind == "nonuniform":
        assert details.get("arch", details.get("format", "")).startswith("deci")  # the per-layer writers ran
    assert_unchanged(before, snapshot(handle))


def test_every_registered_exporter_is_covered():
    assert set(load_registry().exporters) <= {fmt for fmt, _, _ in CASES}


def test_float32_export_after_a_bfloat16_one_is_the_float32_export_alone(tmp_path):
    alone, after = make_model("plain"), make_model("plain")
    export("transformers", {"dtype": "float32"}, alone, tmp_path / "alone")
    export("vllm", {"dtype": "bfloat16"}, after, tmp_path / "first")
    export("transformers", {"dtype": "float32"}, after, tmp_path / "after")
    weights = written_weights(tmp_path / "alone")
    assert_same_weights(written_weights(tmp_path / "after"), weights)
    for name in ("config.json", "generation_config.json"):
        assert (tmp_path / "after" / name).read_text() == (tmp_path / "alone" / name).read_text()
    # and the float32 export is the model in memory, bit for bit
    state = alone.model.state_dict()
    assert_same_weights(weights, {k: state[k] for k in weights})


def _files(dest: Path) -> set[str]:
    return {p.name for p in dest.iterdir() if p.suffix == ".safetensors" or p.name.endswith("index.json")}


@pytest.mark.parametrize("dtype,tie,shard", [("float32", False, None), ("bfloat16", True, None),
                                             ("float16", False, "60KB"), ("bfloat16", True, "40KB")])
def test_hf_dir_is_what_save_pretrained_writes_for_a_cast_copy(tmp_path, dtype, tie, shard):
    from transformers import AutoModelForCausalLM

    handle = make_model("tied" if tie else "plain")
    torch_dtype = getattr(torch, dtype)
    kwargs = {"max_shard_size": shard} if shard else {}
    reference = copy.deepcopy(handle.model).to(torch_dtype)
    reference.save_pretrained(tmp_path / "reference", **kwargs)
    handle.save_hf(tmp_path / "ours", torch_dtype, **kwargs)
    ours, ref = tmp_path / "ours", tmp_path / "reference"
    assert _files(ours) == _files(ref)
    assert ("model.safetensors.index.json" in _files(ours)) == bool(shard)
    if shard:
        assert len(_files(ours)) > 2  # really sharded
    for name in sorted(_files(ours)):
        if name.endswith(".safetensors"):
            assert_same_weights(load_file(str(ours / name)), load_file(str(ref / name)))
        else:
            assert json.loads((ours / name).read_text()) == json.loads((ref / name).read_text())
    for name in ("config.json", "generation_config.json"):
        assert json.loads((ours / name).read_text()) == json.loads((ref / name).read_text()), name
    assert json.loads((ours / "config.json").read_text())["dtype"] == dtype
    weights = written_weights(ours)
    assert ("lm_head.weight" in weights) != tie  # tied embeddings are written once
    loaded = AutoModelForCausalLM.from_pretrained(str(ours), dtype="auto", local_files_only=True)
    assert loaded.dtype == torch_dtype
    if tie:
        assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    state = loaded.state_dict()
    assert_same_weights({k: state[k] for k in weights}, weights)


def test_save_hf_removes_shards_of_an_earlier_save(tmp_path):
    handle = make_model("plain")
    handle.save_hf(tmp_path, torch.float16, max_shard_size="60KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    handle.save_hf(tmp_path, torch.float32)
    assert _files(tmp_path) == {"model.safetensors"}


def test_model_loaded_from_gguf_keeps_its_config_and_exports_without_the_loader_marker(tmp_path):
    from transformers import AutoModelForCausalLM, GgufConfig

    from compressor.model import ModelSource
    from compressor_exporters.gguf.writer import write_gguf

    write_gguf(make_model("plain"), tmp_path / "tiny.gguf", "F32", tokenizer="none")
    # loaded as compressor.model_loading.load_model loads a GGUF file (the tiny file has no usable tokenizer)
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="tiny.gguf", dtype=torch.float32,
                                              quantization_config=GgufConfig(dequantize=True)).eval()
    if getattr(hf.config, "quantization_config", None) is None:
        # transformers 5 drops the marker after dequantizing; earlier versions kept it on the config
        hf.config.quantization_config = {"quant_method": "gguf", "dequantize": True}
    handle = ModelHandle(hf, None, ModelSource("tiny.gguf", str(tmp_path / "tiny.gguf"), "gguf"))
    before = snapshot(handle)
    for fmt, options in (("vllm", {"dtype": "bfloat16"}), ("transformers", {"dtype": "float32"})):
        export(fmt, options, handle, tmp_path / fmt)
        assert_unchanged(before, snapshot(handle))
        config = json.loads((tmp_path / fmt / "config.json").read_text())
        assert "quantization_config" not in config and config["dtype"] == options["dtype"]
    assert hf.config.quantization_config["quant_method"] == "gguf"
    weights = written_weights(tmp_path / "transformers")
    state = hf.state_dict()
    assert_same_weights(weights, {k: state[k] for k in weights})
    assert set(state) - set(weights) <= {"lm_head.weight"}
