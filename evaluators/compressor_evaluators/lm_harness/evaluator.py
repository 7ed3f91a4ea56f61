"""The `lm_eval` evaluator: lm-evaluation-harness tasks, measured in the export's own runtime."""

from __future__ import annotations

import contextlib
import os
from unittest import mock
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from compressor.api import EvaluationContext, Evaluator, PluginOptions, Runtime, RuntimeUnavailableError, TaskScore
from compressor_evaluators.lm_harness.tasks import task_configs

INSTALL_HINT = "pip install 'lm-eval==0.4.13' (make setup installs it)"


class LmEvalOptions(PluginOptions):
    """Options of the `lm_eval` evaluator."""

    tasks: list[str] = Field(default_factory=lambda: ["shakespeare_mc"], min_length=1,
                             description="lm-eval task names: shipped (shakespeare_mc), from task_files or "
                                         "include_path, or lm-eval's registry (whose data must be cached offline)")
    task_files: list[str] = Field(default_factory=list, description="local lm-eval YAML task files; a relative "
                                                                     "data_files path is read beside the YAML")
    include_path: list[str] = Field(default_factory=list, description="folders of lm-eval task YAMLs, as "
                                                                       "lm-eval's --include_path")
    limit: int | None = Field(None, ge=1, description="items per task (default: all)")
    num_fewshot: int | None = Field(None, ge=0, description="few-shot examples (default: the task's)")
    max_length: int = Field(1024, ge=16, le=131_072, description="tokens per request the runtime is opened for")
    batch_size: int = Field(32, ge=1, le=4096, description="sequences per runtime call")
    bootstrap_iters: int = Field(1000, ge=0, description="lm-eval's bootstrap for standard errors of non-mean "
                                                         "metrics (a mean's is exact)")

    @field_validator("tasks", "task_files", "include_path", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        """`-V tasks=a,b` gives one string: split it."""
        return [x.strip() for x in value.split(",") if x.strip()] if isinstance(value, str) else value


@contextlib.contextmanager
def _offline_and_quiet() -> Iterator[None]:
    """No hub access while tasks load, no progress bars of datasets, and none of lm-eval's environment probes.

    lm-eval records the git hash of the working directory (``git describe``, which prints "fatal: not
    a git repository" outside one) and the machine's environment; the report has compressor's own
    record of both, so those two calls are replaced for the duration.
    """
    import datasets
    import lm_eval.evaluator

    keys = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    before = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: v for k, v in keys.items() if before[k] is None})
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        with mock.patch.object(lm_eval.evaluator, "get_git_commit_hash", lambda: None), \
                mock.patch.object(lm_eval.evaluator, "add_env_info", lambda storage: None):
            yield
    finally:
        if bars:
            datasets.enable_progress_bars()
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)


class LmEvalEvaluator(Evaluator):
    """lm-evaluation-harness tasks (accuracy and the like) measured in the export's runtime."""

    name = "lm_eval"
    summary = "lm-evaluation-harness tasks in the export's own runtime (vLLM, ONNX Runtime, llama.cpp, ...)"
    Options = LmEvalOptions

    def tasks(self, options: LmEvalOptions) -> list[str]:
        """The task names the results will carry."""
        return list(options.tasks)

    def max_len(self, options: LmEvalOptions) -> int:
        """A request is at most ``max_length`` tokens, and the runtime sees one more."""
        return options.max_length + 1

    def conformance_options(self) -> list[dict[str, Any]]:
        """The shipped task, a few items: the kit's tiny model needs no more to show the contract holds."""
        return [{"tasks": ["shakespeare_mc"], "limit": 12, "max_length": 96}]

    def check_environment(self, options: LmEvalOptions) -> None:
        """lm-eval must be installed, and every local task file must exist."""
        try:
            import lm_eval  # noqa: F401
        except ImportError as exc:
            raise RuntimeUnavailableError(f"the lm_eval evaluator needs lm-eval, which is not installed ({exc})",
                                          hint=INSTALL_HINT) from None
        missing = [p for p in [*options.task_files, *options.include_path] if not Path(p).exists()]
        if missing:
            from compressor.api import InputError

            raise InputError(f"lm_eval: {', '.join(missing)} not found", hint="give existing task files or folders")

    def evaluate(self, runtime: Runtime, options: LmEvalOptions,
                 ctx: EvaluationContext) -> dict[str, dict[str, TaskScore]]:
        """Run the tasks through lm-eval with this runtime as the model."""
        with _offline_and_quiet():
            import lm_eval
            from lm_eval.tasks import TaskManager

            from compressor_evaluators.lm_harness.adapter import RuntimeLM

            configs, names = task_configs(options.tasks, [Path(p) for p in options.task_files])
            # lm-eval's own registry is indexed only when a task is not local (the index takes seconds)
            manager = TaskManager(include_path=options.include_path or None, include_defaults=bool(names))
            lm = RuntimeLM(runtime, ctx.tokenizer, min(options.max_length, ctx.max_len - 1), options.batch_size,
                           ctx.log)
            results = lm_eval.simple_evaluate(
                model=lm, tasks=[*configs, *names], task_manager=manager, limit=options.limit,
                num_fewshot=options.num_fewshot, bootstrap_iters=options.bootstrap_iters, log_samples=True,
                random_seed=ctx.seed, numpy_random_seed=ctx.seed, torch_random_seed=ctx.seed,
                fewshot_random_seed=ctx.seed)
        return task_scores(results)


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):  # lm-eval writes "N/A" where it has no standard error
        return None


def task_scores(results: dict[str, Any]) -> dict[str, dict[str, TaskScore]]:
    """lm-eval's results as ``{task: {metric: TaskScore}}``, with per-item values where lm-eval logged them."""
    out: dict[str, dict[str, TaskScore]] = {}
    better = results.get("higher_is_better") or {}
    for task, row in (results.get("results") or {}).items():
        samples = sorted((results.get("samples") or {}).get(task) or [], key=lambda s: s["doc_id"])
        for key, value in row.items():
            if "," not in key or "_stderr," in key or _number(value) is None:
                continue
            metric, flt = key.split(",", 1)
            name = metric if flt == "none" else f"{metric}_{flt}"
            per_item = tuple(float(s[metric]) for s in samples) if samples and all(
                isinstance(s.get(metric), (int, float)) for s in samples) else None
            out.setdefault(task, {})[name] = TaskScore(
                value=float(value), stderr=_number(row.get(f"{metric}_stderr,{flt}")),
                higher_is_better=bool((better.get(task) or {}).get(metric, True)), samples=per_item)
    return out
