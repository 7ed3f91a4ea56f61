"""The heal stage and the built-in ``distill``: it lowers the KL to the teacher, LoRA keeps frozen weights and merges
to the same function, the teacher is never modified, the recipe places the stage between prune and quantize, and
heal data that shares text with the evaluation windows is refused."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from compressor_methods.distill import Distill, DistillOptions
from compressor_methods.distill.losses import boundary_pairs, logit_kl
from compressor_methods.distill.trainable import attach_lora, frozen_digest, merge_lora
from compressor_methods.distill.trainer import evaluate, train
from typer.testing import CliRunner

from compressor.api import StageContext
from compressor.cli import app
from compressor.data import load_windows, overlap_fraction
from compressor.errors import ExitCode, RecipeError
from compressor.plan import plan_build
from compressor.plugin_manager import load_registry
from compressor.recipe import recipe_from_dict
from compressor.testing import random_windows, tiny_family

FAMILY = "qwen2"  # biases on q/k/v: LoRA must leave them alone too


def pruned_pair(seed: int = 0):
    """A tiny teacher and a student with one layer dropped from a copy of it."""
    teacher = tiny_family(FAMILY, layers=4, seed=seed)
    student = copy.deepcopy(teacher)
    student.drop_layers([1])
    return teacher, student


def context(teacher, windows: np.ndarray, log=lambda _: None) -> StageContext:
    return StageContext(seed=0, log=log, heal_loader=lambda: windows, teacher_loader=lambda: teacher)


def test_one_heal_step_reduces_the_kl_to_the_teacher():
    teacher, student = pruned_pair()
    ids = random_windows(6, 32, int(teacher.config.vocab_size), seed=3)
    opts = DistillOptions(steps=1, lr=1e-3, batch_size=6, eval_every=1, holdout=1)
    params = [p for p in student.model.parameters()]
    for p in params:
        p.requires_grad_(True)
    before = evaluate(student.model, teacher.model, ids, 6, 0).kl
    train(student.model, teacher.model, params, ids, ids, opts, [], seed=0)
    after = evaluate(student.model, teacher.model, ids, 6, 1).kl
    assert before > 0.01, "dropping a layer must change the tiny model's output"
    assert after < 0.95 * before, (before, after)


def test_distill_lowers_held_out_kl_and_keeps_shapes():
    teacher, student = pruned_pair()
    shapes = {k: v.shape for k, v in student.model.state_dict().items()}
    windows = random_windows(24, 32, int(teacher.config.vocab_size), seed=5).numpy()
    opts = DistillOptions(steps=12, lr=3e-3, batch_size=4, eval_every=4, holdout=4, patience=5)
    details = Distill().apply(student, opts, context(teacher, windows))
    assert details["held_out_after"]["kl"] < 0.9 * details["held_out_before"]["kl"], details["evaluations"]
    assert {k: v.shape for k, v in student.model.state_dict().items()} == shapes
    assert details["tokens_seen"] == 12 * 4 * 32 and details["steps"] == 12
    assert [c["title"] for c in details["loss_curves"]] == ["distillation loss per step", "held-out KL to the teacher"]
    assert len(details["loss_curves"][0]["series"]["train"]) == 12
    assert not any(p.requires_grad for p in student.model.parameters())


def test_the_teachers_weights_are_never_modified():
    teacher, student = pruned_pair()
    before = frozen_digest(teacher.model)
    windows = random_windows(16, 32, int(teacher.config.vocab_size), seed=5).numpy()
    Distill().apply(student, DistillOptions(steps=3, lr=1e-2, batch_size=4, holdout=4, hidden_weight=1.0),
                    context(teacher, windows))
    assert frozen_digest(teacher.model) == before
    assert not any(p.requires_grad for p in teacher.model.parameters())


def test_lora_leaves_frozen_weights_bit_identical_and_merges_to_the_same_function():
    teacher, student = pruned_pair()
    ids = random_windows(8, 32, int(teacher.config.vocab_size), seed=7)
    frozen = {k: v.clone() for k, v in student.model.state_dict().items()}
    peft_model = attach_lora(student.model, rank=4, alpha=8, seed=0)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    assert params and all("lora_" in n for n, p in peft_model.named_parameters() if p.requires_grad)
    opts = DistillOptions(steps=5, lr=1e-2, batch_size=4, eval_every=5, holdout=4, patience=5)
    train(peft_model, teacher.model, params, ids[:4], ids[4:], opts, [], seed=0)
    for name, p in peft_model.named_parameters():  # the base weights, under peft's wrapping names
        if "lora_" not in name:
            key = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
            assert torch.equal(p, frozen[key]), name
    with torch.no_grad():
        adapted = peft_model(input_ids=ids).logits
        merged = merge_lora(peft_model)
        folded = merged(input_ids=ids).logits
    assert merged is student.model
    assert not any("lora" in n for n, _ in merged.named_modules())
    changed = (adapted - teacher.model(input_ids=ids).logits).abs().max()
    assert changed > 1e-3, "the adapters must have learnt something for the merge check to mean anything"
    assert torch.allclose(adapted, folded, atol=1e-4), float((adapted - folded).abs().max())


def test_lora_through_the_method_records_its_checks():
    teacher, student = pruned_pair()
    windows = random_windows(16, 32, int(teacher.config.vocab_size), seed=5).numpy()
    details = Distill().apply(student, DistillOptions(steps=4, lr=1e-2, batch_size=4, holdout=4, eval_every=2,
                                                      train="lora", lora_rank=4), context(teacher, windows))
    assert details["lora"]["frozen_weights_unchanged"] is True
    assert details["lora"]["merge_max_abs_logit_diff"] < 1e-3
    assert not any("lora" in n for n, _ in student.model.named_modules())


def test_train_mlp_changes_only_the_mlps():
    teacher, student = pruned_pair()
    before = {k: v.clone() for k, v in student.model.state_dict().items()}
    windows = random_windows(16, 32, int(teacher.config.vocab_size), seed=5).numpy()
    details = Distill().apply(student, DistillOptions(steps=3, lr=1e-2, batch_size=4, holdout=4, eval_every=1,
                                                      patience=3, train="mlp"), context(teacher, windows))
    assert details["best_step"] > 0, details["evaluations"]
    after = student.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".mlp." in k for k in changed), sorted(changed)


def test_early_stopping_keeps_the_best_step():
    teacher, student = pruned_pair()
    windows = random_windows(16, 32, int(teacher.config.vocab_size), seed=5).numpy()
    # a learning rate far too high: held-out KL rises after the first evaluation, so training stops
    details = Distill().apply(student, DistillOptions(steps=40, lr=1.0, batch_size=4, holdout=4, eval_every=2,
                                                      patience=2), context(teacher, windows))
    assert details["stopped_early"] and details["steps"] < 40
    kls = [e["kl"] for e in details["evaluations"]]
    assert details["held_out_after"]["kl"] == min(kls)
    best_step = details["best_step"]
    assert details["held_out_after"]["step"] == best_step


def test_hidden_boundaries_follow_the_kept_layers():
    # layers 0, 2, 3 of 4 kept: the output of student layer 0 stands where teacher layer 0's does, of layer 1 (the
    # original 2) where teacher layer 2's does; the last layer's output is the logits' business
    assert boundary_pairs([0, 2, 3], 4) == [(1, 1), (2, 3)]
    assert boundary_pairs([0, 1, 2, 3], 4) == [(1, 1), (2, 2), (3, 3)]


def test_logit_kl_is_zero_for_the_same_logits_and_scaled_by_temperature():
    logits = torch.randn(2, 5, 11)
    assert float(logit_kl(logits, logits)) == pytest.approx(0, abs=1e-6)
    other = torch.randn(2, 5, 11)
    assert float(logit_kl(other, logits, 2.0)) > 0


def test_memory_estimate_refuses_a_run_that_cannot_fit(monkeypatch):
    import compressor_methods.distill.method as method

    teacher, student = pruned_pair()
    windows = random_windows(16, 32, int(teacher.config.vocab_size), seed=5).numpy()
    monkeypatch.setattr(method, "available_bytes", lambda device: 1000)
    from compressor.errors import ResourceError

    with pytest.raises(ResourceError, match="healing needs about") as err:
        Distill().apply(student, DistillOptions(steps=1, holdout=4), context(teacher, windows))
    assert err.value.exit_code == ExitCode.RESOURCE and "gradient_checkpointing" in err.value.hint


def test_the_recipe_runs_heal_after_prune_and_before_quantize():
    registry = load_registry()
    recipe = recipe_from_dict({"prune": [{"method": "layer_drop", "options": {"layers": 1}}],
                               "heal": {"method": "distill"}, "quantize": {"method": "rtn"},
                               "export": [{"format": "transformers"}]})
    assert [s.slot for s in plan_build(recipe, registry).stages] == ["prune", "heal", "quantize"]
    with pytest.raises(RecipeError, match="is a heal method"):
        plan_build(recipe_from_dict({"prune": [{"method": "distill"}]}), registry)


def test_heal_windows_share_no_text_with_the_calibration_or_evaluation_windows():
    from compressor.data import heal_windows
    from compressor.testing import tiny_tokenizer

    tok = tiny_tokenizer()
    calib = load_windows("shakespeare", "calibration", tok, 64, 128, seed=0)
    evaluation = load_windows("shakespeare", "evaluation", tok, 16, 128, seed=0)
    plain = load_windows("shakespeare", "heal", tok, 3000, 100, seed=0)
    assert overlap_fraction(plain, calib) > 0  # at another length, windows of the same plays do share text
    heal = heal_windows("shakespeare", tok, 3000, 100, seed=0, avoid=calib)
    assert heal.shape == (3000, 100)
    assert overlap_fraction(heal, calib) == 0 and overlap_fraction(heal, evaluation) == 0
    assert overlap_fraction(calib, calib) == 1


def build_args(model_dir, out, *extra):
    return ["build", "--model", str(model_dir), "--out", str(out), "--method", "layer_drop", "--layers", "1",
            "--heal", "distill", "-H", "steps=2", "-H", "holdout=2", "-H", "batch_size=2", "--heal-samples", "8",
            "--heal-seq-len", "32", "--calib-samples", "4", "--calib-seq-len", "32", "-e", "transformers",
            "--eval-samples", "2", "--eval-seq-len", "32", "--no-verify", *extra]


def test_heal_data_sharing_text_with_the_evaluation_is_refused(tiny_model_dir, tmp_path):
    from compressor.testing import tiny_tokenizer

    evaluation = load_windows("shakespeare", "evaluation", tiny_tokenizer(), 8, 32, seed=0)
    np.save(tmp_path / "leak.npy", evaluation)
    result = CliRunner().invoke(app, build_args(tiny_model_dir, tmp_path / "out", "--heal-data",
                                                str(tmp_path / "leak.npy"), "--heal-samples", "8"))
    assert result.exit_code == ExitCode.INPUT, result.output
    assert "the heal data holds 100.0% of the evaluation windows' text" in result.output
    assert not (tmp_path / "out").exists()


def test_a_heal_build_reports_the_run_and_warns_on_shared_calibration_text(tiny_model_dir, tmp_path):
    import json

    from compressor.testing import tiny_tokenizer

    calibration = load_windows("shakespeare", "calibration", tiny_tokenizer(), 4, 32, seed=0)
    np.save(tmp_path / "heal.npy", np.concatenate([calibration, random_windows(8, 32, 256, 1).numpy()]))
    result = CliRunner().invoke(app, build_args(tiny_model_dir, tmp_path / "out", "--heal-data",
                                                str(tmp_path / "heal.npy"), "--heal-samples", "12"))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    heal = report["stages"][1]
    assert heal["slot"] == "heal" and heal["method"] == "distill"
    assert heal["details"]["steps"] == 2 and heal["details"]["tokens_seen"] == 2 * 2 * 32
    assert heal["usage"]["seconds"] > 0 and heal["usage"]["peak_rss_mb"] > 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["input"]["data"]["heal"]["shape"] == [12, 32]
    assert manifest["input"]["data"]["heal"]["shared_with_calibration"] > 0.3
    assert any("heal data shares" in w for w in report["warnings"]), report["warnings"]
    assert any(p.name.startswith("loss-1-distill") for p in (tmp_path / "out" / "plots").iterdir())
    assert "heal distill: 2 steps" in (tmp_path / "out" / "report.md").read_text()


def test_gradient_checkpointing_trains_to_the_same_weights():
    results = []
    for checkpointing in (False, True):
        teacher, student = pruned_pair()
        windows = random_windows(24, 32, int(teacher.config.vocab_size), seed=5).numpy()
        details = Distill().apply(student, DistillOptions(steps=4, lr=3e-3, batch_size=4, holdout=4, eval_every=4,
                                                          gradient_checkpointing=checkpointing),
                                  context(teacher, windows))
        assert details["best_step"] == 4, details["evaluations"]
        results.append(student.model.state_dict())
    plain, recomputed = results
    assert any(not torch.equal(plain[k], pruned_pair()[1].model.state_dict()[k]) for k in plain)
    for k in plain:
        assert torch.allclose(plain[k], recomputed[k], atol=1e-5), k


def test_a_teacher_on_disk_teaches_exactly_as_one_in_memory(tiny_model_dir, tmp_path):
    import json

    exported = {}
    for place in ("memory", "disk"):
        out = tmp_path / place
        result = CliRunner().invoke(app, build_args(tiny_model_dir, out, "-H", f"teacher={place}"))
        assert result.exit_code == 0, result.output
        assert json.loads((out / "report.json").read_text())["stages"][1]["details"]["teacher"] == place
        exported[place] = {p.name: p.read_bytes() for p in (out / "transformers").glob("*.safetensors")}
    assert exported["memory"] and exported["disk"] == exported["memory"]


def test_auto_leaves_the_teacher_on_disk_when_it_does_not_fit_in_memory(tiny_model_dir, monkeypatch):
    import compressor_methods.distill.method as method
    from compressor_methods.distill.teacher import streamed_bytes, weight_bytes

    from compressor.calibration.offload import open_lazy
    from compressor.errors import ResourceError
    from compressor.model_loading import load_model

    def student_and_context():
        student = load_model(str(tiny_model_dir), hash_files=False)
        student.drop_layers([1])
        windows = random_windows(12, 32, int(student.config.vocab_size), seed=5).numpy()
        ctx = StageContext(seed=0, log=lambda _: None, heal_loader=lambda: windows,
                           teacher_loader=lambda: load_model(str(tiny_model_dir), hash_files=False),
                           teacher_disk_loader=lambda: open_lazy(tiny_model_dir))
        return student, ctx

    opts = DistillOptions(steps=2, holdout=2, batch_size=2)
    student, ctx = student_and_context()
    lazy = open_lazy(tiny_model_dir)
    assert streamed_bytes(lazy) < weight_bytes(lazy) / 2  # one layer of four, the head and a norm
    whole = method.memory_estimate(student, opts, weight_bytes(lazy), 32, torch.device("cpu")).total
    streamed = method.memory_estimate(student, opts, streamed_bytes(lazy), 32, torch.device("cpu")).total
    monkeypatch.setattr(method, "available_bytes", lambda device: (whole + streamed) // 2)
    assert Distill().apply(student, opts, ctx)["teacher"] == "disk"
    monkeypatch.setattr(method, "available_bytes", lambda device: whole + 1)
    student, ctx = student_and_context()
    assert Distill().apply(student, opts, ctx)["teacher"] == "memory"
    monkeypatch.setattr(method, "available_bytes", lambda device: streamed - 1)
    student, ctx = student_and_context()
    with pytest.raises(ResourceError, match="healing needs about"):
        Distill().apply(student, opts, ctx)


def test_a_teacher_on_disk_needs_safetensors():
    from compressor.errors import UsageError

    teacher, student = pruned_pair()
    windows = random_windows(8, 32, int(teacher.config.vocab_size), seed=5).numpy()
    with pytest.raises(UsageError, match="teacher: disk needs the original model as safetensors"):
        Distill().apply(student, DistillOptions(steps=1, holdout=2, batch_size=2, teacher="disk"),
                        context(teacher, windows))
