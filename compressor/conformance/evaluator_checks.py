"""What every evaluator plugin must do, checked on a tiny Llama 3 model run in PyTorch.

An :class:`EvaluationRun` runs the evaluator once through a recording :class:`~compressor.api.Runtime`
(TorchRuntime underneath, as verify would hand it a vLLM or llama.cpp runtime), with the network
blocked; each ``check_*`` function judges one rule and raises
:class:`compressor.conformance.ConformanceError`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from compressor.api import (CompressorError, EvaluationContext, Evaluator, LatencySamples, Runtime, TaskScore,
                            TokenScores, TorchRuntime)
from compressor.conformance import ConformanceError
from compressor.conformance.method_checks import network_blocked, tiny_model


class RecordingRuntime(Runtime):
    """A TorchRuntime that records the longest sequence each call asked of it."""

    name = "pytorch (recording)"

    def __init__(self, inner: TorchRuntime) -> None:
        self.inner = inner
        self.longest = 0
        self.calls = 0

    def score(self, windows: np.ndarray, top_k: int) -> TokenScores:
        self.calls += 1
        self.longest = max(self.longest, int(np.asarray(windows).shape[1]))
        return self.inner.score(windows, top_k)

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[list[int]]:
        self.calls += 1
        self.longest = max(self.longest, max((len(p) for p in prompts), default=0) + int(max_new_tokens))
        return self.inner.generate(prompts, max_new_tokens)

    def latency(self, prompt_tokens: int, new_tokens: int, repeats: int, warmup: int) -> LatencySamples:
        return self.inner.latency(prompt_tokens, new_tokens, repeats, warmup)


@dataclass
class EvaluationRun:
    """One evaluate() of an evaluator on the kit's tiny model, and what happened around it."""

    evaluator: Evaluator
    options: Any
    results: Any = None
    error: BaseException | None = None
    longest: int = 0
    calls: int = 0
    connections: list[str] = field(default_factory=list)


def run_evaluator(cls: type[Evaluator], raw_options: dict[str, Any], seed: int = 0) -> EvaluationRun:
    """Evaluate the kit's tiny Llama 3 with ``cls``; never raises what evaluate raises."""
    evaluator, options = cls(), cls.Options.model_validate(raw_options)
    model = tiny_model("llama3", tokenizer=True)
    runtime = RecordingRuntime(TorchRuntime(model.model))
    ctx = EvaluationContext(tokenizer=model.tokenizer, max_len=max(evaluator.max_len(options), 64), seed=seed,
                            log=lambda _: None)
    run = EvaluationRun(evaluator, options)
    with network_blocked() as tried:
        try:
            run.results = evaluator.evaluate(runtime, options, ctx)
        except Exception as exc:  # judged by check_evaluator_errors
            run.error = exc
    run.longest, run.calls, run.connections = runtime.longest, runtime.calls, tried
    return run


def _succeeded(run: EvaluationRun) -> None:
    if run.error is not None:
        raise ConformanceError(f"{run.evaluator.name} failed on a tiny Llama with options "
                               f"{run.options.model_dump(mode='json')}: {type(run.error).__name__}: {run.error}")


def check_evaluator_errors(run: EvaluationRun) -> None:
    """What evaluate raises must be a compressor error type (verify reports it as a measurement error)."""
    if run.error is not None and not isinstance(run.error, CompressorError):
        raise ConformanceError(f"{run.evaluator.name} raised {type(run.error).__name__}: {run.error}; raise an "
                               "error type of compressor.api with a hint")


def check_results_shape(run: EvaluationRun) -> None:
    """evaluate returns {task: {metric: TaskScore}} with finite values, non-negative errors, consistent items."""
    _succeeded(run)
    if not isinstance(run.results, dict) or not run.results:
        raise ConformanceError(f"{run.evaluator.name}: evaluate returned {type(run.results).__name__}, not a "
                               "non-empty {task: {metric: TaskScore}}")
    for task, metrics in run.results.items():
        for metric, score in (metrics or {}).items():
            where = f"{run.evaluator.name}: {task}.{metric}"
            if not isinstance(score, TaskScore):
                raise ConformanceError(f"{where} is a {type(score).__name__}, not a compressor.api.TaskScore")
            if not math.isfinite(score.value) or (score.stderr is not None and not score.stderr >= 0):
                raise ConformanceError(f"{where}: value {score.value} and stderr {score.stderr} must be finite, >= 0")
            if score.samples is not None and not score.samples:
                raise ConformanceError(f"{where}: samples is empty; give one value per item, or None")
            if "." in task or "." in metric:
                raise ConformanceError(f"{where}: task and metric names must not contain '.' (budgets are "
                                       "max_drop.<task>.<metric>)")


def check_declared_tasks(run: EvaluationRun) -> None:
    """tasks(options) must name exactly the tasks evaluate reports (budgets are checked against it up front)."""
    _succeeded(run)
    declared, reported = set(run.evaluator.tasks(run.options)), set(run.results or {})
    if not declared <= reported:
        raise ConformanceError(f"{run.evaluator.name}: tasks() says {sorted(declared)} but evaluate reported "
                               f"{sorted(reported)}; a budget on a declared task would never be measured")


def check_within_max_len(run: EvaluationRun) -> None:
    """No call may send a longer sequence than max_len(options): verify opens the runtimes that long."""
    _succeeded(run)
    if run.calls == 0:
        raise ConformanceError(f"{run.evaluator.name}: evaluate never called the runtime's score or generate; "
                               "it must measure the model in the runtime it is given")
    limit = run.evaluator.max_len(run.options)
    if run.longest > limit:
        raise ConformanceError(f"{run.evaluator.name}: sent a {run.longest}-token sequence but max_len() is {limit}; "
                               "a runtime opened for max_len would refuse it")


def check_same_seed_same_results(run: EvaluationRun, again: EvaluationRun) -> None:
    """Two evaluations with the same seed give the same figures (a gate must not flip on a rerun)."""
    _succeeded(run)
    _succeeded(again)
    a = json.dumps({t: {m: s.value for m, s in ms.items()} for t, ms in run.results.items()}, sort_keys=True)
    b = json.dumps({t: {m: s.value for m, s in ms.items()} for t, ms in again.results.items()}, sort_keys=True)
    if a != b:
        raise ConformanceError(f"{run.evaluator.name}: the same seed gave {a} and then {b}")


def check_evaluator_offline(run: EvaluationRun) -> None:
    """An evaluator must not reach the network (tasks and data must be local or cached)."""
    if run.connections:
        raise ConformanceError(f"{run.evaluator.name} tried to connect to {', '.join(run.connections[:3])}; "
                               "an evaluator must work offline")
