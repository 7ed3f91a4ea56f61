"""`compress build --offload disk`: the weights stay memory-mapped in the input's safetensors shards.

Every layer-by-layer method and every streaming exporter must write exactly the files an in-memory
build writes (same tensors, bit for bit); what needs the whole model is loaded whole when it fits
and refused with exit 6 when it does not; peak memory stays a fraction of the weights (psutil).
"""

from __future__ import annotations

import glob
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from transformers import AutoTokenizer
from typer.testing import CliRunner

from compressor.cli import app
from compressor.errors import ExitCode
from compressor.model_loading import _hash_files
from compressor.testing import peak_rss, tiny_family, tiny_tokenizer, write_synthetic_llama

runner = CliRunner()
CALIB = ["--calib-samples", "4", "--calib-seq-len", "32"]
FAST_VERIFY = ["--eval-samples", "2", "--eval-seq-len", "32", "--set", "verify.latency.rounds=3",
               "--set", "verify.latency.prompt_tokens=8", "--set", "verify.latency.new_tokens=4",
               "--set", "verify.generate_tokens=4"]


@pytest.fixture(scope="module")
def sharded_models(tmp_path_factory):
    """Tiny bf16 models of each family, saved as several safetensors shards with an index (made on demand)."""
    made: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in made:
            made[family] = _save_sharded(family, tmp_path_factory.mktemp(f"sharded-{family}") / "model")
        return made[family]
    return get


@pytest.fixture(scope="module")
def sharded_model(sharded_models):
    """The sharded tiny Llama 3."""
    return sharded_models("llama3")


def _save_sharded(family: str, path: Path) -> Path:
    # the tokenizer as the model's directory loads it again (Qwen2's class adds its own special token)
    tiny_family(family, layers=1, tokenizer=tiny_tokenizer()).save_hf(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tiny_family(family, layers=4, tokenizer=tokenizer).save_hf(path, torch.bfloat16, max_shard_size="200KB")
    assert (path / "model.safetensors.index.json").is_file() and len(list(path.glob("*.safetensors"))) > 2
    return path


def _tensors(directory: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(glob.glob(f"{directory}/*.safetensors")):
        with safe_open(f, "pt") as g:
            out.update({k: g.get_tensor(k) for k in g.keys()})
    return out


def _gguf_tensors(path: Path) -> dict[str, np.ndarray]:
    import gguf

    return {t.name: np.array(t.data) for t in gguf.GGUFReader(str(path)).tensors}


def _onnx_graph(path: Path) -> tuple[list[tuple], dict[str, np.ndarray]]:
    """The nodes (op, inputs, outputs) and initializers of a graph, external data included."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    nodes = [(n.op_type, tuple(n.input), tuple(n.output)) for n in graph.node]
    return nodes, {t.name: numpy_helper.to_array(t) for t in graph.initializer}


def _assert_same_exports(a: Path, b: Path) -> None:
    for sub in sorted(p.name for p in a.iterdir() if p.is_dir()):
        if list((a / sub).glob("*.safetensors")):
            x, y = _tensors(a / sub), _tensors(b / sub)
            assert set(x) == set(y)
            assert [k for k in x if not torch.equal(x[k], y[k])] == [], sub
            assert json.loads((a / sub / "config.json").read_text()) == json.loads((b / sub / "config.json").read_text())
        elif (a / sub / "model.gguf").is_file():
            x, y = _gguf_tensors(a / sub / "model.gguf"), _gguf_tensors(b / sub / "model.gguf")
            assert list(x) == list(y)
            assert [k for k in x if not np.array_equal(x[k], y[k])] == [], sub
        elif (a / sub / "model.onnx").is_file():
            x, y = _onnx_graph(a / sub / "model.onnx"), _onnx_graph(b / sub / "model.onnx")
            assert x[0] == y[0], sub  # the same nodes, in order, with the same inputs and outputs
            assert set(x[1]) == set(y[1]) and [k for k in x[1] if not np.array_equal(x[1][k], y[1][k])] == [], sub


BUILDS = {
    "wanda-vllm-gguf-onnx": ["--method", "wanda", "--sparsity", "0.5", "-e", "vllm", "-e", "gguf", "-e", "onnx"],
    "sparsegpt-2:4-transformers": ["--method", "sparsegpt", "--pattern", "2:4", "-e", "transformers"],
    "layer_drop-vllm-gguf": ["--method", "layer_drop", "--layers", "1", "-e", "vllm", "-e", "gguf"],
    "magnitude-width-vllm-gguf": ["--method", "magnitude", "-O", "structure=width", "-O", "width_fraction=0.25",
                                  "-e", "vllm", "-e", "gguf"],
    "magnitude-rtn-vllm": ["--method", "magnitude", "--sparsity", "0.3", "--quantize", "rtn", "-e", "vllm"],
    "gptq-w8a8-vllm": ["--quantize", "gptq", "-Q", "scheme=W8A8", "-e", "vllm"],
    # not layer by layer / not streamed: the whole model is read into RAM first, which fits here
    "onnx-int8-loads-whole": ["--method", "layer_drop", "--layers", "1", "-e", "onnx", "-E", "quantize=int8"],
}


# every build on Llama 3; on Qwen2 (biases) the two that cut rows and layers
CASES = [("llama3", b) for b in BUILDS] + [("qwen2", "wanda-vllm-gguf-onnx"), ("qwen2", "magnitude-width-vllm-gguf")]


@pytest.mark.parametrize("family,build", CASES)
def test_offloaded_build_writes_the_same_exports(sharded_models, family, build, tmp_path):
    sharded_model = sharded_models(family)
    before = _hash_files(sorted(sharded_model.iterdir()))
    outs = {}
    for mode in ("none", "disk"):
        outs[mode] = tmp_path / mode
        result = runner.invoke(app, ["build", "-m", str(sharded_model), *BUILDS[build], *CALIB, "--no-verify",
                                     "--offload", mode, "-o", str(outs[mode])])
        assert result.exit_code == 0, result.output
    report = json.loads((outs["disk"] / "report.json").read_text())
    assert report["offload"]["mode"] == "disk"
    if build.endswith("loads-whole"):
        assert "loading the whole model into RAM" in result.output
    else:
        assert "loading the whole model" not in result.output
    _assert_same_exports(outs["none"], outs["disk"])
    assert not (outs["disk"] / ".offload").exists()
    assert _hash_files(sorted(sharded_model.iterdir())) == before  # the input is only read


def test_offloaded_build_verifies_against_an_offloaded_original(sharded_model, tmp_path, needs_llama_cpp):
    out = tmp_path / "out"
    result = runner.invoke(app, ["build", "-m", str(sharded_model), "--method", "layer_drop", "--layers", "1",
                                 "-e", "gguf", "-E", "outtype=F32", *CALIB, *FAST_VERIFY, "--offload", "disk",
                                 "-o", str(out), "--json"])
    assert result.exit_code in (0, ExitCode.VERIFY_FAILED), result.output
    report = json.loads(result.stdout)
    assert report["offload"]["mode"] == "disk" and report["verify"]["gguf"]["metrics"]
    assert report["verify"]["gguf"]["status"] in ("pass", "fail")
    # compress verify of that export, with the original opened the same way
    again = runner.invoke(app, ["verify", str(out / "gguf"), "--original", str(sharded_model), *FAST_VERIFY,
                                "--set", "offload=disk", "--json"])
    assert again.exit_code in (0, ExitCode.VERIFY_FAILED), again.output
    assert "(offload: disk)" in again.output
    assert json.loads(again.stdout)["verify"]["gguf"]["metrics"]["perplexity"] == \
        report["verify"]["gguf"]["metrics"]["perplexity"]


def test_layer_drop_keeps_qwen2_per_layer_attention_kinds(tmp_path):
    """max_window_layers and layer_types follow the dropped layers, and stock transformers loads the result."""
    from transformers import AutoConfig, AutoModelForCausalLM

    model = tiny_family("qwen2", layers=4, tokenizer=tiny_tokenizer())
    model.config.use_sliding_window, model.config.sliding_window, model.config.max_window_layers = True, 16, 2
    model.config.layer_types = ["full_attention", "full_attention", "sliding_attention", "sliding_attention"]
    model.drop_layers([1])
    assert model.config.max_window_layers == 1
    assert model.config.layer_types == ["full_attention", "sliding_attention", "sliding_attention"]
    model.save_hf(tmp_path / "m")
    reloaded = AutoConfig.from_pretrained(tmp_path / "m")
    assert reloaded.layer_types == model.config.layer_types and reloaded.num_hidden_layers == 3
    AutoModelForCausalLM.from_pretrained(tmp_path / "m")


def test_whole_model_method_is_refused_with_exit_6_when_it_cannot_fit(sharded_model, tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESSOR_MEMORY_LIMIT", "100KB")
    out = tmp_path / "out"
    result = runner.invoke(app, ["build", "-m", str(sharded_model), "--method", "surgeon", "-e", "gguf",
                                 "--no-verify", "--offload", "disk", "-o", str(out)])
    assert result.exit_code == ExitCode.RESOURCE, result.output
    assert "surgeon needs the whole model in memory" in result.output and "GiB is free" in result.output
    assert not out.exists()


def test_streaming_exports_do_not_load_the_whole_model(tmp_path, monkeypatch):
    """auto picks disk when the model cannot fit; wanda and the vllm/gguf/onnx writers then work within a cap
    that the whole model would break (the whole-model check would refuse them)."""
    model = tmp_path / "model"
    weights = write_synthetic_llama(model, shard_bytes=4 * 10**6, vocab_size=16384, hidden_size=256,
                                    intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, head_dim=64, bos_token_id=1, eos_token_id=2)
    loaded = weights * 2  # float32 in RAM
    monkeypatch.setenv("COMPRESSOR_MEMORY_LIMIT", str(loaded // 2))
    out = tmp_path / "out"
    result = runner.invoke(app, ["build", "-m", str(model), "--method", "wanda", "--sparsity", "0.5", "-e", "vllm",
                                 "-e", "gguf", "-e", "onnx", *CALIB, "--no-verify", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["offload"]["mode"] == "disk" and report["offload"]["requested"] == "auto"
    assert "more than the" in report["offload"]["reason"]
    checked = report["exports"]["onnx"]["details"]["validation"]  # ONNX Runtime (a child process) vs PyTorch
    assert checked["max_abs_diff"] <= checked["atol"] == 1e-3
    index = json.loads((model / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    # an export that needs the whole model is refused before any work
    refused = runner.invoke(app, ["build", "-m", str(model), "--method", "wanda", "--sparsity", "0.5", "-e", "onnx",
                                  "-E", "quantize=int8", *CALIB, "--no-verify", "-o", str(tmp_path / "refused")])
    assert refused.exit_code == ExitCode.RESOURCE, refused.output
    assert "export onnx (onnx) needs the whole model in memory" in refused.output


def test_disk_offload_needs_safetensors(tmp_path):
    result = runner.invoke(app, ["build", "-m", "smollm2-135m", "--method", "magnitude", "-e", "gguf", "--no-verify",
                                 "--offload", "disk", "-o", str(tmp_path / "out")])
    assert result.exit_code == ExitCode.USAGE, result.output
    assert "offload: disk reads the weights from safetensors files" in result.output


def test_streamed_safetensors_round_trip(tmp_path):
    from compressor.safetensors_stream import PendingTensor, write_streamed

    g = torch.Generator().manual_seed(0)
    tensors = {"a": torch.randn(300, 7, generator=g), "b": torch.randn(5, generator=g).to(torch.bfloat16),
               "c": torch.arange(12, dtype=torch.int64).reshape(3, 4), "d": torch.tensor(3.5)}
    pending = [PendingTensor(n, tuple(t.shape), t.dtype, lambda s, e, t=t: t[s:e] if t.dim() else t)
               for n, t in tensors.items()]
    import compressor.safetensors_stream as stream

    old, stream.BLOCK_BYTES = stream.BLOCK_BYTES, 100  # many blocks per tensor
    try:
        write_streamed(tmp_path / "x.safetensors", pending, {"format": "pt"})
    finally:
        stream.BLOCK_BYTES = old
    back = _tensors(tmp_path)
    assert set(back) == set(tensors) and all(torch.equal(back[n], t) for n, t in tensors.items())


def _compress() -> str:
    return str(Path(sys.executable).with_name("compress"))


@pytest.mark.parametrize("build,export,limit", [("wanda", "vllm", 0.35), ("layer_drop", "gguf", 0.25)])
def test_offloaded_build_peak_rss(build, export, limit, tmp_path):
    """Peak RSS (psutil, process tree) above an identical build of a tiny model stays under ``limit`` x weights."""
    shape = dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_key_value_heads=4,
                 head_dim=64, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    big, small = tmp_path / "big", tmp_path / "small"
    weights = write_synthetic_llama(big, shard_bytes=200 * 10**6, vocab_size=32000, num_hidden_layers=12, **shape)
    write_synthetic_llama(small, vocab_size=512, num_hidden_layers=2, **shape)
    flags = {"wanda": ["--method", "wanda", "--sparsity", "0.5"], "layer_drop": ["--method", "layer_drop",
                                                                                "--layers", "1"]}[build]
    peaks = {}
    for name, model in (("small", small), ("big", big)):
        cmd = [_compress(), "build", "-m", str(model), *flags, "-e", export, *CALIB, "--no-verify", "--offload",
               "disk", "-o", str(tmp_path / f"out-{name}")]
        with open(tmp_path / f"{name}.log", "w") as log:
            rc, peaks[name] = peak_rss(cmd, log=log)
        assert rc == 0, (tmp_path / f"{name}.log").read_text()[-2000:]
    assert weights > 400 * 10**6
    growth = (peaks["big"] - peaks["small"]) / weights
    stages = {name: {k: v.get("peak_rss_mb") for k, v in json.loads((tmp_path / f"out-{name}" / "manifest.json")
                                                                    .read_text())["usage"].items()}
              for name in peaks}
    assert growth < limit, f"peak RSS grew by {growth:.3f} x the weights ({peaks}; by stage, MiB: {stages})"
