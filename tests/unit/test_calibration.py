"""The host's layer-sequential calibration engine on tiny random Llamas."""

from __future__ import annotations

import pytest
import torch

from compressor.api import StageContext
from compressor.calibration import CalibrationConfig, LayerCompressor, open_lazy, run_layer_sequential, store_of
from compressor.calibration import memory as calib_memory
from compressor.errors import ResourceError
from compressor.testing import random_windows, tiny_llama

QUIET = CalibrationConfig(log=lambda s: None)


class Recorder(LayerCompressor):
    """Records statistics; optionally zeroes q/k/v to see whether later groups notice."""

    def __init__(self, zero_qkv: bool = False) -> None:
        self.seen: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
        self.zero_qkv = zero_qkv

    def statistics(self):
        return {"input_sq_norm": None, "hessian": None}

    def compress(self, step):
        for name in step.names:
            self.seen[(step.index, name)] = {k: v.clone() for k, v in step.stats[name].items()}
            if self.zero_qkv and name in ("q_proj", "k_proj", "v_proj"):
                step.linears[name].weight.data.zero_()


def _config(**kw):
    return CalibrationConfig(log=lambda s: None, **kw)


@pytest.mark.parametrize("true_sequential", [False, True])
def test_layer_inputs_match_the_models_hidden_states(true_sequential):
    handle = tiny_llama(layers=3)
    ids = random_windows(5, 24, 256)
    with torch.no_grad():
        hidden = handle.model(ids, output_hidden_states=True).hidden_states
    rec = Recorder()
    run_layer_sequential(handle, ids, rec, _config(true_sequential=true_sequential, batch_size=2))
    for i in range(3):
        x = handle.layers[i].input_layernorm(hidden[i]).detach().reshape(-1, 64)
        torch.testing.assert_close(rec.seen[(i, "q_proj")]["input_sq_norm"], x.pow(2).mean(0), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(rec.seen[(i, "k_proj")]["hessian"], 2 * x.t() @ x / x.shape[0],
                                   rtol=1e-4, atol=1e-5)
    assert set(rec.seen) == {(i, n) for i in range(3) for n in
                             ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")}


def test_true_sequential_groups_see_already_compressed_groups():
    ids = random_windows(4, 16, 256)
    one_shot, sequential = Recorder(zero_qkv=True), Recorder(zero_qkv=True)
    run_layer_sequential(tiny_llama(layers=2), ids, one_shot, _config(true_sequential=False))
    run_layer_sequential(tiny_llama(layers=2), ids, sequential, _config(true_sequential=True))
    # with v_proj zeroed the attention output (o_proj's input) is zero, but only if o sees it
    assert sequential.seen[(0, "o_proj")]["input_sq_norm"].abs().max() == 0
    assert one_shot.seen[(0, "o_proj")]["input_sq_norm"].abs().max() > 0
    # both modes give later layers the compressed layer's outputs
    torch.testing.assert_close(one_shot.seen[(1, "q_proj")]["input_sq_norm"],
                               sequential.seen[(1, "q_proj")]["input_sq_norm"], rtol=1e-4, atol=1e-6)


def test_engine_keeps_no_autograd_graph_between_layers():
    # with gradients on, each layer's output held the graph of every layer before it (27 GB on
    # SmolLM2-135M with 32x512 windows, against an estimate of 0.2 GB)
    handle = tiny_llama(layers=3)
    seen: list[bool] = []
    hooks = [layer.register_forward_hook(lambda m, a, out: seen.append(
        (out[0] if isinstance(out, tuple) else out).requires_grad)) for layer in handle.layers]
    try:
        for true_sequential in (False, True):
            run_layer_sequential(handle, random_windows(2, 8, 256), Recorder(), _config(true_sequential=true_sequential))
    finally:
        for h in hooks:
            h.remove()
    assert seen and not any(seen)


def test_engine_refuses_a_run_that_cannot_fit(monkeypatch):
    monkeypatch.setattr(calib_memory, "available_bytes", lambda device: 1024)
    with pytest.raises(ResourceError) as err:
        run_layer_sequential(tiny_llama(layers=1), random_windows(2, 8, 256), Recorder(), _config())
    assert "offload" in (err.value.hint or "") and "fewer calibration samples" in err.value.hint


def test_memory_estimate_is_printed_before_starting():
    lines: list[str] = []
    run_layer_sequential(tiny_llama(layers=1), random_windows(2, 8, 256), Recorder(),
                         CalibrationConfig(log=lines.append))
    assert lines[0].startswith("calibration memory estimate on cpu")


def test_bfloat16_calibration_keeps_fp32_weights():
    handle = tiny_llama(layers=2)
    rec = Recorder()
    run_layer_sequential(handle, random_windows(3, 16, 256), rec, _config(dtype="bfloat16"))
    assert all(p.dtype == torch.float32 for p in handle.model.parameters())
    assert rec.seen[(1, "down_proj")]["hessian"].dtype == torch.float32


def test_disk_offload_gives_identical_masks(tmp_path):
    from compressor_methods.wanda import Wanda

    ids = random_windows(6, 32, 256).numpy()
    ctx = StageContext(calibration_loader=lambda: ids, log=lambda s: None)
    memory = tiny_llama(layers=3)
    memory.save_hf(tmp_path / "model")
    lazy = open_lazy(tmp_path / "model", workdir=tmp_path / "work")
    assert all(p.is_meta for p in lazy.layers[0].parameters())
    Wanda().apply(memory, Wanda.Options(sparsity=0.5), ctx)
    details = Wanda().apply(lazy, Wanda.Options(sparsity=0.5, offload=True), ctx)
    assert details["achieved_sparsity"] == pytest.approx(0.5)
    assert all(p.is_meta for p in lazy.layers[2].parameters())  # written back to disk, not kept in RAM
    store_of(lazy.model).materialize(lazy.model)
    for i in range(3):
        for name, lin in memory.linears(i).items():
            other = lazy.linears(i)[name].weight
            assert torch.equal(lin.weight == 0, other == 0), f"layer {i} {name}"
            torch.testing.assert_close(lin.weight, other)


def test_cpu_offload_flag_matches_in_memory_run():
    from compressor_methods.sparsegpt import SparseGPT

    ids = random_windows(4, 32, 256).numpy()
    ctx = StageContext(calibration_loader=lambda: ids, log=lambda s: None)
    a, b = tiny_llama(layers=2), tiny_llama(layers=2)
    SparseGPT().apply(a, SparseGPT.Options(sparsity=0.5), ctx)
    SparseGPT().apply(b, SparseGPT.Options(sparsity=0.5, offload=True), ctx)
    for i in range(2):
        for name, lin in a.linears(i).items():
            assert torch.equal(lin.weight == 0, b.linears(i)[name].weight == 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_run_matches_cpu_masks_mostly():
    from compressor_methods.wanda import Wanda

    ids = random_windows(4, 32, 256).numpy()
    ctx = StageContext(calibration_loader=lambda: ids, log=lambda s: None)
    a, b = tiny_llama(layers=2), tiny_llama(layers=2)
    Wanda().apply(a, Wanda.Options(sparsity=0.5), ctx)
    Wanda().apply(b, Wanda.Options(sparsity=0.5, device="cuda", offload=True), ctx)
    assert next(b.model.parameters()).device.type == "cpu"
    agree = [(lin.weight == 0).eq(b.linears(i)[n].weight == 0).float().mean().item()
             for i in range(2) for n, lin in a.linears(i).items()]
    assert min(agree) > 0.98
