"""The conformance kit's tests. Collected by ``pytest --compressor-plugin NAME``, or imported::

    from compressor.conformance.kit import *  # noqa: F401,F403
    COMPRESSOR_PLUGIN = ["my_method"]

Each test calls one check of :mod:`compressor.conformance.method_checks` or
:mod:`compressor.conformance.exporter_checks`; a method is applied once per option set and
model family, an exporter exports and runs once, and the checks share those runs.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from compressor.conformance import evaluator_checks as ev
from compressor.conformance import exporter_checks as ex
from compressor.conformance import method_checks as mc


@pytest.fixture(scope="module")
def method_run(method_case: Any) -> mc.MethodRun:
    """The method applied once to a fresh tiny model of the case's family."""
    return mc.run_method(method_case.cls, json.loads(method_case.options), method_case.family)


@pytest.fixture(scope="module")
def evaluator_run(evaluator_case: Any) -> ev.EvaluationRun:
    """The evaluator run once on the kit's tiny Llama 3 in PyTorch."""
    return ev.run_evaluator(evaluator_case.cls, json.loads(evaluator_case.options))


@pytest.fixture(scope="module")
def exporter_run(exporter_case: Any, tmp_path_factory: pytest.TempPathFactory) -> ex.ExportRun:
    """The exporter's full-precision export of a tiny Llama 3."""
    model = mc.tiny_model("llama3", tokenizer=True)  # some formats (GGUF) carry the tokenizer
    return ex.run_export(exporter_case.cls, {}, model, tmp_path_factory.mktemp(f"kit-{exporter_case.id}"))


@pytest.fixture(scope="module")
def kit_windows() -> np.ndarray:
    """Two 24-token windows of random token ids."""
    from compressor.testing import random_windows

    return random_windows(2, 24, 256, seed=3).numpy()


@pytest.fixture(scope="module")
def runtime_probe(exporter_run: ex.ExportRun, kit_windows: np.ndarray,
                  tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What the exporter's own runtime returned for the kit's calls, in a process of its own."""
    return ex.probe_runtime(exporter_run, kit_windows, [[1, 5, 9], [1, 7]], tmp_path_factory.mktemp("probe"))


def test_method_rejects_unknown_options(method_case: Any) -> None:
    mc.check_rejects_unknown_options(method_case.cls)


def test_method_raises_only_compressor_errors(method_run: mc.MethodRun) -> None:
    mc.check_errors_are_compressor_errors(method_run)


def test_method_kinds_match_what_apply_changes(method_run: mc.MethodRun) -> None:
    mc.check_kinds_match_changes(method_run)


def test_method_uses_calibration_exactly_when_it_says(method_run: mc.MethodRun) -> None:
    mc.check_calibration_use(method_run)


def test_method_leaves_a_config_that_matches_and_reloads(method_run: mc.MethodRun) -> None:
    mc.check_config_matches_and_reloads(method_run)


def test_method_details_are_json(method_run: mc.MethodRun) -> None:
    mc.check_details_are_json(method_run)


def test_method_same_seed_same_weights(method_case: Any, method_run: mc.MethodRun) -> None:
    again = mc.run_method(method_case.cls, json.loads(method_case.options), method_case.family)
    mc.check_same_seed_same_result(method_run, again)


def test_method_stays_offline(method_run: mc.MethodRun) -> None:
    mc.check_no_network(method_run)


def test_exporter_benefits_cover_every_kind(exporter_case: Any) -> None:
    ex.check_benefits_cover_every_kind(exporter_case.cls)


def test_exporter_writes_only_its_directory(exporter_run: ex.ExportRun) -> None:
    ex.check_exports_into_its_directory(exporter_run)


def test_exporter_never_changes_the_model(exporter_run: ex.ExportRun) -> None:
    ex.check_model_unchanged(exporter_run)


def test_exporter_runtime_scores_like_transformers(exporter_run: ex.ExportRun, kit_windows: np.ndarray,
                                                   runtime_probe: dict[str, Any]) -> None:
    ex.check_scores_match_transformers(exporter_run, kit_windows, runtime_probe)


def test_exporter_runtime_generates_the_asked_count(exporter_run: ex.ExportRun,
                                                    runtime_probe: dict[str, Any]) -> None:
    ex.check_generates_the_asked_count(exporter_run, runtime_probe)


def test_exporter_runtime_latency_is_well_formed(exporter_run: ex.ExportRun, runtime_probe: dict[str, Any]) -> None:
    ex.check_latency_samples(exporter_run, runtime_probe)


def test_exporter_runtime_closes_twice(exporter_run: ex.ExportRun, runtime_probe: dict[str, Any]) -> None:
    ex.check_close_twice(exporter_run, runtime_probe)


def test_evaluator_rejects_unknown_options(evaluator_case: Any) -> None:
    mc.check_rejects_unknown_options(evaluator_case.cls)


def test_evaluator_raises_only_compressor_errors(evaluator_run: ev.EvaluationRun) -> None:
    ev.check_evaluator_errors(evaluator_run)


def test_evaluator_returns_task_scores(evaluator_run: ev.EvaluationRun) -> None:
    ev.check_results_shape(evaluator_run)


def test_evaluator_reports_the_tasks_it_declares(evaluator_run: ev.EvaluationRun) -> None:
    ev.check_declared_tasks(evaluator_run)


def test_evaluator_stays_within_max_len(evaluator_run: ev.EvaluationRun) -> None:
    ev.check_within_max_len(evaluator_run)


def test_evaluator_same_seed_same_results(evaluator_case: Any, evaluator_run: ev.EvaluationRun) -> None:
    ev.check_same_seed_same_results(evaluator_run, ev.run_evaluator(evaluator_case.cls,
                                                                     json.loads(evaluator_case.options)))


def test_evaluator_stays_offline(evaluator_run: ev.EvaluationRun) -> None:
    ev.check_evaluator_offline(evaluator_run)
