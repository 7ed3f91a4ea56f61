"""The conformance kit fails a plugin that breaks a rule: one deliberately broken fixture plugin per check."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from compressor.conformance import ConformanceError
from compressor.conformance import exporter_checks as ex
from compressor.conformance import method_checks as mc

sys.path.insert(0, str(Path(__file__).parents[1] / "fixtures"))
import broken_plugins as broken  # noqa: E402


def _fails(check, *args, match: str) -> None:
    with pytest.raises(ConformanceError, match=match):
        check(*args)


def test_a_method_that_accepts_any_option_fails():
    _fails(mc.check_rejects_unknown_options, broken.AcceptsAnyOption, match="accepted an unknown key")


def test_a_method_that_raises_a_plain_exception_fails():
    run = mc.run_method(broken.RaisesPlainError, {}, "llama3")
    _fails(mc.check_errors_are_compressor_errors, run, match="raised ValueError")


def test_a_method_whose_kinds_misstate_its_change_fails():
    run = mc.run_method(broken.WrongKinds, {}, "qwen2")
    _fails(mc.check_kinds_match_changes, run, match=r"says \['depth'\] but apply changed \['sparsity'\]")


def test_a_method_that_reads_calibration_without_saying_so_fails():
    _fails(mc.check_calibration_use, mc.run_method(broken.SecretCalibration, {}, "llama3"),
           match="needs_calibration\\(\\) is False but apply used")


def test_a_method_that_resizes_without_syncing_the_config_fails():
    _fails(mc.check_config_matches_and_reloads, mc.run_method(broken.StaleConfig, {}, "qwen3"),
           match="the config disagrees with the weights")


def test_a_method_whose_details_are_not_json_fails():
    _fails(mc.check_details_are_json, mc.run_method(broken.NotJson, {}, "llama3"), match="not JSON")


def test_a_method_that_ignores_the_seed_fails():
    a, b = (mc.run_method(broken.Unseeded, {}, "llama3") for _ in range(2))
    _fails(mc.check_same_seed_same_result, a, b, match="the same seed gave different weights")


def test_a_method_that_reaches_the_network_fails():
    _fails(mc.check_no_network, mc.run_method(broken.PhonesHome, {}, "llama3"), match="tried to connect")


def test_a_well_behaved_method_passes_every_method_check():
    run = mc.run_method(broken._Sparsify, {}, "qwen2")
    for check in (mc.check_errors_are_compressor_errors, mc.check_kinds_match_changes, mc.check_calibration_use,
                  mc.check_config_matches_and_reloads, mc.check_details_are_json, mc.check_no_network):
        check(run)
    mc.check_same_seed_same_result(run, mc.run_method(broken._Sparsify, {}, "qwen2"))


def _export(cls, tmp_path):
    return ex.run_export(cls, {}, mc.tiny_model("llama3", tokenizer=True), tmp_path)


def test_an_exporter_that_changes_the_model_fails(tmp_path):
    _fails(ex.check_model_unchanged, _export(broken.ChangesTheModel, tmp_path), match="changed the model in memory")


def test_an_exporter_that_writes_beside_its_directory_fails(tmp_path):
    _fails(ex.check_exports_into_its_directory, _export(broken.WritesBeside, tmp_path), match="cache.bin")


def test_an_exporter_whose_benefits_miss_kinds_fails():
    _fails(ex.check_benefits_cover_every_kind, broken.SaysLittle, match="says nothing about")


KIT_WINDOWS = np.array([[1, 5, 9, 12, 40, 7, 3, 8], [2, 6, 10, 11, 30, 4, 9, 1]], dtype=np.int64)
PROMPTS = [[1, 5, 9], [1, 7]]


def _probe(cls, tmp_path):
    run = _export(cls, tmp_path / "export")
    return run, ex.probe_runtime(run, KIT_WINDOWS, PROMPTS, (tmp_path / "probe").resolve())


def _mkdirs(tmp_path):
    (tmp_path / "export").mkdir()
    (tmp_path / "probe").mkdir()


def test_a_correct_runtime_passes_every_runtime_check(tmp_path):
    _mkdirs(tmp_path)
    run, probe = _probe(broken._SavesModel, tmp_path)
    ex.check_scores_match_transformers(run, KIT_WINDOWS, probe)
    ex.check_generates_the_asked_count(run, probe)
    ex.check_latency_samples(run, probe)
    ex.check_close_twice(run, probe)


@pytest.mark.parametrize("cls,check,match", [
    (broken.ScoresOff, "scores", "differ from transformers"),
    (broken.GeneratesTooFew, "generate", "exactly 5"),
    (broken.TimesZero, "latency", "latency"),
    (broken.ClosesOnce, "close", "second close"),
])
def test_an_exporter_whose_runtime_breaks_the_contract_fails(cls, check, match, tmp_path):
    _mkdirs(tmp_path)
    run, probe = _probe(cls, tmp_path)
    checks = {"scores": lambda: ex.check_scores_match_transformers(run, KIT_WINDOWS, probe),
              "generate": lambda: ex.check_generates_the_asked_count(run, probe),
              "latency": lambda: ex.check_latency_samples(run, probe),
              "close": lambda: ex.check_close_twice(run, probe)}
    _fails(checks[check], match=match)


def test_the_base_evaluator_fixture_passes_every_evaluator_check():
    from compressor.conformance import evaluator_checks as ev

    run = ev.run_evaluator(broken._NextTokenAccuracy, {})
    for check in (ev.check_evaluator_errors, ev.check_results_shape, ev.check_declared_tasks,
                  ev.check_within_max_len, ev.check_evaluator_offline):
        check(run)
    ev.check_same_seed_same_results(run, ev.run_evaluator(broken._NextTokenAccuracy, {}))


def test_an_evaluator_that_accepts_any_option_fails():
    _fails(mc.check_rejects_unknown_options, broken.EvaluatorAcceptsAnyOption, match="accepted an unknown key")


def test_an_evaluator_that_raises_a_plain_exception_fails():
    from compressor.conformance import evaluator_checks as ev

    _fails(ev.check_evaluator_errors, ev.run_evaluator(broken.EvaluatorRaisesPlainError, {}), match="raised KeyError")


def test_an_evaluator_that_returns_bare_floats_fails():
    from compressor.conformance import evaluator_checks as ev

    _fails(ev.check_results_shape, ev.run_evaluator(broken.EvaluatorReturnsFloats, {}), match="not a compressor.api")


def test_an_evaluator_that_reports_another_task_than_it_declares_fails():
    from compressor.conformance import evaluator_checks as ev

    _fails(ev.check_declared_tasks, ev.run_evaluator(broken.EvaluatorUndeclaredTask, {}), match="never be measured")


def test_an_evaluator_that_sends_more_than_max_len_fails():
    from compressor.conformance import evaluator_checks as ev

    _fails(ev.check_within_max_len, ev.run_evaluator(broken.EvaluatorTooLong, {}), match="40-token sequence")


def test_an_unseeded_evaluator_fails():
    from compressor.conformance import evaluator_checks as ev

    a, b = (ev.run_evaluator(broken.EvaluatorUnseeded, {}) for _ in range(2))
    _fails(ev.check_same_seed_same_results, a, b, match="the same seed gave")


def test_an_evaluator_that_reaches_the_network_fails():
    from compressor.conformance import evaluator_checks as ev

    _fails(ev.check_evaluator_offline, ev.run_evaluator(broken.EvaluatorPhonesHome, {}), match="tried to connect")
