"""The contracts a plugin implements: methods (prune/quantize stages), exporters, runtimes and evaluators.

A plugin module implements the ``register_methods`` / ``register_exporters`` / ``register_evaluators`` hooks
(see :mod:`compressor.hookspecs`) and calls ``register(SomeClass)`` for each class.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from compressor.model import ModelHandle


class Kind(str, Enum):
    """A kind of compression, used to tell whether a target runtime gets faster from it."""

    DEPTH = "depth"  # fewer decoder layers
    WIDTH = "width"  # narrower layers, the same size in every layer
    NONUNIFORM = "nonuniform"  # layers of different sizes
    UNSTRUCTURED = "unstructured"  # zeros anywhere in a weight matrix
    SEMI_STRUCTURED = "n:m"  # N zeros in every M consecutive weights
    HEADS = "heads"  # whole attention heads (KV groups with their query heads) removed
    W8A16 = "w8a16"
    W4A16 = "w4a16"
    W8A8 = "w8a8"
    RUNTIME_QUANT = "runtime-quant"  # quantization done by the exporter itself


@dataclass(frozen=True)
class Benefit:
    """What a compression kind buys in one runtime: speed, size, and why."""

    speed: bool
    size: bool
    note: str = ""


class PluginOptions(BaseModel):
    """Base for method and exporter options: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class StageContext:
    """What the host lends a method while it runs."""

    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    workdir: Path | None = None
    log: Callable[[str], None] = print
    calibration_loader: Callable[[], np.ndarray] | None = None
    heal_loader: Callable[[], np.ndarray] | None = None
    teacher_loader: Callable[[], ModelHandle] | None = None
    teacher_disk_loader: Callable[[], ModelHandle | None] | None = None
    _calibration: np.ndarray | None = field(default=None, repr=False)

    def calibration_ids(self) -> np.ndarray:
        """Return the calibration token windows, an int64 array of shape [N, L]."""
        if self._calibration is None:
            if self.calibration_loader is None:
                from compressor.errors import DataError

                raise DataError("this method needs calibration data, but none was configured",
                                hint="set data.calibration in the recipe or pass --calib")
            self._calibration = self.calibration_loader()
        return self._calibration

    def heal_ids(self) -> np.ndarray:
        """Return the heal stage's training windows (the recipe's ``data.heal``), an int64 array [N, L]."""
        if self.heal_loader is None:
            from compressor.errors import DataError

            raise DataError("this method needs heal data, but none was configured", hint="set data.heal in the recipe")
        return self.heal_loader()

    def teacher(self) -> ModelHandle:
        """Load the original, uncompressed model (a fresh copy, for a heal stage's teacher; the caller frees it)."""
        if self.teacher_loader is None:
            from compressor.errors import UsageError

            raise UsageError("this method needs the original model as a teacher, and the host gave none")
        return self.teacher_loader()

    def teacher_on_disk(self) -> ModelHandle | None:
        """Open the original with its weights left in its safetensors files, or None when they are not safetensors.

        Its parameters are on ``meta``: run it with ``streamed_forward(handle.model, head=True)`` (each layer is
        read as it runs), or read it whole with ``store_of(handle.model).materialize(handle.model)``.
        """
        return None if self.teacher_disk_loader is None else self.teacher_disk_loader()


class Method(ABC):
    """A compression stage: a prune, heal or quantize method (run in that order).

    Subclasses set ``name`` (the recipe's ``method``), ``stage``, a one-line
    ``summary`` and an ``Options`` pydantic model, and implement :meth:`apply`.
    """

    name: ClassVar[str]
    stage: ClassVar[Literal["prune", "heal", "quantize"]] = "prune"
    summary: ClassVar[str] = ""
    Options: ClassVar[type[PluginOptions]] = PluginOptions

    def needs_calibration(self, options: Any) -> bool:
        """Return True when :meth:`apply` will call ``ctx.calibration_ids()``."""
        return False

    def kinds(self, options: Any) -> frozenset[Kind]:
        """Return the kinds of compression these options produce."""
        return frozenset()

    def supports_offload(self, options: Any) -> bool:
        """Return True when :meth:`apply` works on a model whose layers live on disk (``offload: disk``).

        Such a method touches one decoder layer at a time, through the calibration engine or
        :func:`compressor.calibration.layer_in_memory`. For any other method the host loads the
        whole model first, or refuses with exit 6 when it cannot fit in RAM.
        """
        return False

    def write_paths(self, options: Any) -> list[Path]:
        """Return the directories outside the build's output under which :meth:`apply` creates files.

        The host refuses, before any work, one that is an input, lies inside an input or inside ``--out``.
        """
        return []

    def estimate_memory(self, model: ModelHandle, options: Any, samples: int, seq_len: int,
                        ctx: StageContext) -> Any:
        """Return a :class:`compressor.calibration.MemoryEstimate` of :meth:`apply`'s peak, or None.

        ``model`` may live on the meta device (sizes only): ``compress build --dry-run`` asks
        before any weights are loaded.
        """
        return None

    def conformance_options(self) -> list[dict[str, Any]]:
        """Option sets the conformance kit applies to its tiny models (each must be valid; default: the defaults)."""
        return [{}]

    @abstractmethod
    def apply(self, model: ModelHandle, options: Any, ctx: StageContext) -> dict[str, Any]:
        """Compress ``model`` in place; return JSON-serialisable details for the report."""


@dataclass
class TokenScores:
    """Next-token scores of a runtime on evaluation windows of shape [N, L].

    Position t of window n scores the prediction of token t+1 from tokens 0..t.
    ``topk_logprobs`` is sorted in descending order along its last axis.
    """

    target_logprobs: np.ndarray  # [N, L-1] float
    topk_ids: np.ndarray  # [N, L-1, K] int
    topk_logprobs: np.ndarray  # [N, L-1, K] float


@dataclass
class LatencySamples:
    """Repeated latency measurements of one runtime."""

    prefill_s: list[float]  # seconds to process the prompt and return the first token
    decode_tok_s: list[float]  # tokens per second after the first token
    prompt_tokens: int
    new_tokens: int
    # share of the machine's CPU capacity that other processes used while this was timed (None: not
    # measured); a busy machine shows here, and the gate does not trust timings taken under it
    background_cpu_share: float | None = None


def latency_prompt(prompt_tokens: int, vocab_size: int) -> list[int]:
    """The prompt every runtime's ``latency()`` times: ids 1 .. vocab_size-1, cycling (same input everywhere)."""
    span = max(int(vocab_size), 2) - 1
    return [i % span + 1 for i in range(prompt_tokens)]


@dataclass(frozen=True)
class RuntimeSettings:
    """How a runtime should be opened for verification."""

    device: str = "cpu"
    dtype: str = "float32"
    max_len: int = 1024
    threads: int | None = None


class Runtime(ABC):
    """An exported artifact loaded in its real runtime, able to score, generate and time."""

    name: ClassVar[str] = ""

    @abstractmethod
    def score(self, windows: np.ndarray, top_k: int) -> TokenScores:
        """Score every next-token prediction in ``windows`` ([N, L] token ids)."""

    @abstractmethod
    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[list[int]]:
        """Greedily continue each prompt by ``max_new_tokens`` tokens (no early stop)."""

    @abstractmethod
    def latency(self, prompt_tokens: int, new_tokens: int, repeats: int, warmup: int) -> LatencySamples:
        """Time prefill and decode of one sequence, ``repeats`` times after ``warmup`` runs."""

    def describe(self) -> dict[str, Any]:
        """Return runtime facts for the report (versions, device)."""
        return {"runtime": self.name}

    def close(self) -> None:
        """Release the runtime's processes and memory."""

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class PlanFacts:
    """What a build will produce, known before any weights are loaded (for :meth:`Exporter.check_plan`)."""

    kinds: frozenset[Kind]  # the compression kinds the recipe's stages declare
    config: Any  # the input model's HF config (sizes, architecture)
    num_parameters: int  # parameters of the input model
    quantized: bool = False  # a quantize stage will run
    verify_len: int | None = None  # the longest sequence verify will run in the runtime (None: verify off)


@dataclass(frozen=True)
class RuntimeProcess:
    """How the host runs an exporter's runtime in its own worker process during verify."""

    env: Mapping[str, str] = field(default_factory=dict)  # set before the runtime is opened
    start_timeout_s: float = 600.0
    request_timeout_s: float = 900.0


class Exporter(ABC):
    """Writes a compressed model for one runtime and can load it back there to verify it.

    Verify never runs :meth:`open_runtime` in the build's process: the host starts a worker
    process per artifact (see :mod:`compressor.runtime_process`), so a native crash in a
    runtime becomes a clear verify error instead of killing the build.
    """

    name: ClassVar[str]
    runtime_name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    Options: ClassVar[type[PluginOptions]] = PluginOptions

    def benefits(self, options: Any) -> Mapping[Kind, Benefit]:
        """Return, per compression kind, what this runtime gains from it at the installed version."""
        return {}

    def check_model(self, model: ModelHandle, options: Any) -> None:
        """Raise :class:`compressor.errors.ExportError` early if this model cannot be expressed."""

    def check_environment(self, options: Any, verify: bool) -> None:
        """Raise :class:`compressor.errors.RuntimeUnavailableError` when what the export (and, with
        ``verify``, its runtime) needs is not installed; called before any weights are loaded."""

    def check_plan(self, options: Any, facts: PlanFacts) -> None:
        """Raise a :class:`compressor.errors.UsageError` when the recipe will produce a model this
        exporter refuses, where that is knowable before any weights are loaded."""

    def streams_offloaded_models(self, options: Any) -> bool:
        """Return True when :meth:`export` writes a model whose layers live on disk one tensor at a time.

        Otherwise the host loads the whole model before this export, or refuses with exit 6 when
        it cannot fit in RAM.
        """
        return False

    def reference_options(self, options: Any) -> Any:
        """Return these options without their precision or quantization choices.

        Verify exports the original model with them as the full-precision reference, so that
        quantization done by the exporter itself is measured, not cancelled out.
        """
        return options

    def estimate_size(self, options: Any, num_parameters: int) -> int:
        """Return a rough upper bound of the artifact's bytes on disk, for the free-space check."""
        return 4 * num_parameters

    def runtime_process(self, options: Any, settings: RuntimeSettings) -> RuntimeProcess:
        """Return the environment and time limits of this runtime's worker process."""
        return RuntimeProcess()

    @abstractmethod
    def export(self, model: ModelHandle, dest: Path, options: Any) -> dict[str, Any]:
        """Write the artifact into the empty directory ``dest``; return details for the report."""

    @abstractmethod
    def open_runtime(self, artifact: Path, options: Any, settings: RuntimeSettings) -> Runtime:
        """Load the artifact at ``artifact`` in this exporter's runtime, in this process."""

    def runtime_versions(self) -> dict[str, str]:
        """Return the versions of the runtime packages, for the manifest."""
        return {}


@dataclass(frozen=True)
class TaskScore:
    """One task metric of one model, as an evaluator measured it."""

    value: float
    stderr: float | None = None  # standard error of ``value`` (None: the evaluator cannot tell)
    higher_is_better: bool = True
    samples: tuple[float, ...] | None = None  # the metric per item, in a fixed item order (for a paired comparison)


@dataclass
class EvaluationContext:
    """What the host lends an evaluator: the original model's tokenizer and the runtime's limits."""

    tokenizer: Any  # a Hugging Face tokenizer (the same for the original and the compressed model)
    max_len: int  # the longest sequence (prompt + continuation) the runtime was opened for
    seed: int = 0
    workdir: Path | None = None
    log: Callable[[str], None] = print


class Evaluator(ABC):
    """Measures task metrics of a model in an export's own runtime, for the verify gate.

    Verify runs :meth:`evaluate` on the original and on the compressed model's :class:`Runtime`;
    a recipe gates on the difference with budgets ``max_drop.<task>.<metric>``.
    """

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    Options: ClassVar[type[PluginOptions]] = PluginOptions

    def tasks(self, options: Any) -> list[str]:
        """Return the task names :meth:`evaluate` will report (budgets are checked against them up front)."""
        return []

    def check_environment(self, options: Any) -> None:
        """Raise :class:`compressor.errors.RuntimeUnavailableError` when what it needs is not installed."""

    def max_len(self, options: Any) -> int:
        """Return the longest sequence (in tokens) it sends to a runtime; verify opens runtimes that long."""
        return 0

    def conformance_options(self) -> list[dict[str, Any]]:
        """Option sets the conformance kit evaluates its tiny model with (keep them small; default: the defaults)."""
        return [{}]

    @abstractmethod
    def evaluate(self, runtime: Runtime, options: Any, ctx: EvaluationContext) -> dict[str, dict[str, TaskScore]]:
        """Measure every task on ``runtime``: ``{task: {metric: TaskScore}}``."""


def describe_options(options_cls: type[BaseModel]) -> list[dict[str, Any]]:
    """List an options model's fields with type, default and description, for help output."""
    rows = []
    for name, f in options_cls.model_fields.items():
        rows.append({"name": name, "type": str(f.annotation).replace("typing.", ""),
                     "default": None if f.is_required() else f.default, "description": f.description or ""})
    return rows


def loss_curve(title: str, x_label: str, y_label: str, x: Sequence[float],
               **series: Sequence[float]) -> dict[str, Any]:
    """A loss curve for a method's report: put a list of these in ``details["loss_curves"]`` and report.html plots it."""
    return {"title": title, "x_label": x_label, "y_label": y_label, "x": [float(v) for v in x],
            "series": {name: [float(v) for v in values] for name, values in series.items()}}


from compressor.progress import counter, steps  # noqa: E402 - a loop's progress bar, for plugins as for the host

# The plugin API's version (semantic versioning): a plugin declares the range it supports as
# ``COMPRESSOR_API = ">=1.0,<2"`` in the module its entry point names. MAJOR changes when a name
# here is removed or a contract changes incompatibly (a signature, a hook, what a field means),
# MINOR when a name or an optional parameter is added, PATCH for fixes that change no contract.
API_VERSION = "1.5.0"  # 1.1: evaluators (register_evaluators, Evaluator, TaskScore); 1.2: data-parallel helpers;
# 1.3: the heal stage (Method.stage "heal", StageContext.heal_ids() and teacher());
# 1.4: StageContext.teacher_on_disk(), counter; 1.5: usable_cpu_count

# What else a plugin may use from the host, importable from here and nowhere else. These are loaded
# on first use (PEP 562), because the modules they come from import compressor.api themselves.
_HOST_NAMES: dict[str, tuple[str, ...]] = {
    "compressor.model": ("LayerSpec", "ModelHandle", "OFFLOADED_SHARD_BYTES", "offloaded_tensors",
                         "write_hf_config"),
    "compressor.calibration": ("ALL_LINEARS", "BUILTIN_STATISTICS", "GROUPS", "CalibrationConfig",
                               "CalibrationReport", "InputHessian", "InputSquaredNorm", "LayerCompressor",
                               "LayerStep", "MemoryEstimate", "Statistic", "StatisticFactory", "available_bytes",
                               "check_fits", "estimate_run", "is_offloaded", "layer_in_memory",
                               "run_layer_sequential", "store_of", "streamed_forward"),
    "compressor.calibration.offload": ("layer_prefix",),
    # data-parallel calibration: a method that loops over windows itself splits and sums with these
    "compressor.distributed": ("all_reduce_sum_", "broadcast_module_", "shard_windows", "sum_float", "sum_int", "world_size"),
    "compressor.layer_similarity": ("BlockIO", "LayerSimilarity", "capture_block_io", "layer_parameters",
                                    "measure_similarity"),
    "compressor.torch_runtime": ("TorchRuntime", "concat_scores", "perplexity", "scores_from_logits"),
    "compressor.safetensors_stream": ("PendingTensor", "write_sharded"),
    "compressor.decilm_loading": ("BlockConfig", "DECILM_ARCHITECTURE", "DECILM_MODEL_TYPE"),
    "compressor.interrupts": ("signals_not_swallowed",),
    "compressor.resources": ("usable_cpu_count",),
    "compressor.hookspecs": ("RegisterEvaluator", "RegisterExporter", "RegisterMethod"),
    "compressor.errors": ("CompressorError", "DataError", "DuplicateNameError", "ExitCode", "ExportError",
                          "InputError", "ModelLoadError", "NoBenefitError", "PluginError", "RecipeError",
                          "ResourceError", "RuntimeCrashedError", "RuntimeTimeoutError", "RuntimeUnavailableError",
                          "UnknownPluginError", "UnsupportedModelError", "UsageError", "ValidationMismatchError",
                          "VerifyError"),
}
_HOST_MODULE = {name: module for module, names in _HOST_NAMES.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _HOST_MODULE.get(name)
    if module is None:
        raise AttributeError(f"module 'compressor.api' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOST_MODULE))


__all__ = ["API_VERSION", "Benefit", "EvaluationContext", "Evaluator", "Exporter", "Kind", "LatencySamples", "Method", "PlanFacts", "PluginOptions",
           "Runtime", "RuntimeProcess", "RuntimeSettings", "Sequence", "StageContext", "TaskScore", "TokenScores",
           "describe_options", "latency_prompt", "loss_curve", "steps", *_HOST_MODULE]
