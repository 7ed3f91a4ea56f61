"""The verify gate: measure the original and the compressed artifact in the same runtime, then apply budgets.

Both artifacts are opened at once, each in its own worker process. Quality is measured on
both, then latency in interleaved rounds (A B, B A, ...), with the model not being timed
suspended. A measurement that cannot be taken (a crash, a time-out, a load failure) is
recorded with the step it happened in; the budgets that needed it come out as ``error``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from compressor.api import EvaluationContext, Exporter, LatencySamples, RuntimeSettings
from compressor.errors import CompressorError, VerifyError
from compressor.metrics import (greedy_match, per_position, perplexity_from_scores, summarize_latency, top1_agreement,
                                topk_kl)
from compressor.progress import steps
from compressor.recipe import Budgets, VerifySpec
from compressor.resources import dir_size
from compressor.runtime_process import IsolatedRuntime, open_isolated
from compressor.speedup import MIN_ROUNDS, Speedup, judge, judge_interval, paired_speedup, round_order, rounds_to_settle
from compressor.task_metrics import TaskResults, compare_tasks

ARTIFACT_FILE = "compressor-artifact.json"
MODELS = ("original", "compressed")
Status = Literal["pass", "fail", "inconclusive", "error"]


@dataclass
class BudgetResult:
    """One budget: its limit, the measured value, and pass, fail, inconclusive or error."""

    name: str
    limit: float
    value: float | None
    status: Status
    detail: str
    interval: list[float] | None = None  # speed and task budgets: the confidence interval of the figure
    rounds_to_settle: int | None = None  # inconclusive: about how many more rounds would decide it

    @property
    def passed(self) -> bool:
        """True only for a clear pass."""
        return self.status == "pass"

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable view (with ``passed`` for readers of older reports)."""
        return {**asdict(self), "passed": self.passed}


@dataclass
class Measurements:
    """What verify measured of one model; a field stays None when its step did not run."""

    scores: Any = None
    generations: list[list[int]] | None = None
    latency: list[LatencySamples] = field(default_factory=list)
    runtime: dict[str, Any] | None = None
    size_bytes: int | None = None
    tasks: TaskResults | None = None  # evaluator results: task -> metric -> TaskScore


@dataclass
class VerifyFailure:
    """The measurement that could not be taken, and why."""

    step: str  # load, score, generate, describe, latency warm-up, latency round N
    model: str  # original or compressed
    error_type: str
    message: str
    hint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable view."""
        return asdict(self)


# budget field -> (metric key, "max" or "min", how to print)
BUDGET_METRICS: dict[str, tuple[str, str, str]] = {
    "max_ppl_increase_pct": ("ppl_increase_pct", "max", "{:.2f}%"),
    "min_top1_agreement": ("top1_agreement", "min", "{:.4f}"),
    "max_kl": ("kl", "max", "{:.4f}"),
    "min_greedy_match": ("greedy_prefix_match", "min", "{:.3f}"),
    "min_speedup": ("decode_speedup", "min", "{:.3f}x"),
    "min_prefill_speedup": ("prefill_speedup", "min", "{:.3f}x"),
    "max_size_ratio": ("size_ratio", "max", "{:.3f}"),
}
SPEED_BUDGETS = {"min_speedup": "decode_speedup_ci", "min_prefill_speedup": "prefill_speedup_ci"}


def reference_options(exporter: Exporter, options: Any, spec: VerifySpec) -> Any:
    """The options the original model is exported with: full precision unless the recipe asks otherwise."""
    return options if spec.reference == "same_options" else exporter.reference_options(options)


def options_diff(options: Any, reference: Any) -> dict[str, dict[str, Any]]:
    """The options in which the reference export differs from the compressed one."""
    a, b = options.model_dump(mode="json"), reference.model_dump(mode="json")
    return {k: {"compressed": a[k], "reference": b.get(k)} for k in a if a[k] != b.get(k)}


class _Session:
    """Both runtimes of one export, and the step being measured (for the error report)."""

    def __init__(self, exporter: Exporter, settings: RuntimeSettings, suspend_idle: bool,
                 log: Callable[[str], None]) -> None:
        self.exporter, self.settings, self.suspend_idle, self.log = exporter, settings, suspend_idle, log
        self.runtimes: dict[str, IsolatedRuntime] = {}
        self.step, self.model = "load", "original"

    def open(self, model: str, artifact: Path, options: Any) -> None:
        self.step, self.model = "load", model
        self.runtimes[model] = open_isolated(self.exporter, artifact, options, self.settings, label=f"the {model} model")
        self._idle(model)

    def use(self, model: str, step: str) -> IsolatedRuntime:
        """The runtime of ``model``, resumed; every other one is suspended while it works."""
        self.step, self.model = step, model
        for other, rt in self.runtimes.items():
            if other != model:
                self._idle(other)
        return self.runtimes[model]

    def _idle(self, model: str) -> None:
        if self.suspend_idle:
            self.runtimes[model].suspend()

    def close(self) -> None:
        for rt in self.runtimes.values():
            try:
                rt.close()
            except Exception:  # closing is best effort; the process group is killed either way
                pass


def _evaluate(evaluator: Any, runtime: IsolatedRuntime, ctx: EvaluationContext) -> TaskResults:
    """Run one planned evaluator; what a plugin raises beyond compressor's errors becomes a VerifyError."""
    try:
        return evaluator.evaluator.evaluate(runtime, evaluator.options, ctx)
    except CompressorError:
        raise
    except Exception as exc:
        raise VerifyError(f"evaluator {evaluator.evaluator.name} failed: {type(exc).__name__}: {exc}",
                          hint="run with COMPRESSOR_DEBUG=1 for the traceback") from exc


def measure_pair(exporter: Exporter, options: Any, ref_options: Any, artifact: Path, reference_dir: Path,
                 windows: np.ndarray, prompts: list[list[int]], spec: VerifySpec, settings: RuntimeSettings,
                 log: Callable[[str], None], evaluators: list[Any] | None = None,
                 eval_ctx: EvaluationContext | None = None) -> tuple[dict[str, Measurements], VerifyFailure | None]:
    """Take every measurement of both models; stop at the first that cannot be taken and say which."""
    meas = {m: Measurements() for m in MODELS}
    meas["original"].size_bytes = dir_size(reference_dir)
    meas["compressed"].size_bytes = dir_size(artifact)
    lat = spec.latency
    session = _Session(exporter, settings, lat.suspend_idle, log)
    try:
        session.open("original", reference_dir, ref_options)
        session.open("compressed", artifact, options)
        for model in MODELS:
            log(f"  {model}: scoring {len(windows)} windows, generating {len(prompts)} x {spec.generate_tokens} tokens")
            # one request each: splitting the windows changes the results of runtimes whose activation
            # quantization is dynamic over the batch (ONNX Runtime int8 moved by 6 points of perplexity)
            meas[model].scores = session.use(model, "score").score(windows, spec.top_k)
            meas[model].generations = session.use(model, "generate").generate(prompts, spec.generate_tokens)
            meas[model].runtime = session.use(model, "describe").describe()
            for ev in evaluators or []:
                log(f"  {model}: evaluator {ev.evaluator.name} ({', '.join(ev.evaluator.tasks(ev.options)) or 'tasks'})")
                found = _evaluate(ev, session.use(model, f"evaluator {ev.evaluator.name}"), eval_ctx)
                meas[model].tasks = {**(meas[model].tasks or {}), **found}
        if lat.warmup:
            for model in MODELS:
                session.use(model, "latency warm-up").latency(lat.prompt_tokens, lat.new_tokens, 1, lat.warmup - 1)
        log(f"  timing prefill {lat.prompt_tokens} + decode {lat.new_tokens} tokens in {lat.rounds} interleaved rounds")
        for r, order in steps(list(enumerate(round_order(lat.rounds))), "verify: timing rounds"):
            for model in order:
                rt = session.use(model, f"latency round {r + 1}")
                meas[model].latency.append(rt.latency(lat.prompt_tokens, lat.new_tokens, 1, 0))
        failure = None
    except CompressorError as exc:  # recorded: the exports are kept and the report says what failed
        failure = VerifyFailure(session.step, session.model, type(exc).__name__, str(exc), exc.hint)
        log(f"  verify error while measuring the {session.model} model ({session.step}): "
            f"{str(exc).splitlines()[0]}")
    finally:
        session.close()
    return meas, failure


def _merge(parts: list[LatencySamples]) -> LatencySamples:
    return LatencySamples([s for p in parts for s in p.prefill_s], [r for p in parts for r in p.decode_tok_s],
                          parts[0].prompt_tokens, parts[0].new_tokens)


def _busy(sample: LatencySamples, max_background_cpu: float | None) -> bool:
    share = sample.background_cpu_share
    return max_background_cpu is not None and share is not None and share > max_background_cpu


def _speedups(a: list[LatencySamples], b: list[LatencySamples], confidence: float, seed: int,
              max_background_cpu: float | None) -> dict[str, Any]:
    """Paired speed-ups over the rounds that other processes left alone.

    A round in which other processes took more than ``max_background_cpu`` of the machine's CPU while
    either runtime was timed measured the load, not the model, so it is left out. When fewer than
    MIN_ROUNDS clean rounds remain, the speed-ups use every round but are marked ``machine_busy``: no speed budget can
    pass on them.
    """
    busy = [r for r in range(len(a)) if _busy(a[r], max_background_cpu) or _busy(b[r], max_background_cpu)]
    clean = [r for r in range(len(a)) if r not in busy]
    used = clean if len(clean) >= MIN_ROUNDS else list(range(len(a)))
    decode = paired_speedup([a[r].decode_tok_s[0] for r in used], [b[r].decode_tok_s[0] for r in used], True,
                            confidence, seed)
    prefill = paired_speedup([a[r].prefill_s[0] for r in used], [b[r].prefill_s[0] for r in used], False,
                             confidence, seed)
    return {"decode_speedup": decode.estimate, "decode_speedup_ci": [decode.low, decode.high],
            "prefill_speedup": prefill.estimate, "prefill_speedup_ci": [prefill.low, prefill.high],
            "speedup_rounds": len(used), "speedup_confidence": confidence, "decode_speedup_rounds": decode.ratios,
            "prefill_speedup_rounds": prefill.ratios, "timing_rounds": len(a),
            "background_cpu_rounds": [[x.background_cpu_share, y.background_cpu_share] for x, y in zip(a, b)],
            "max_background_cpu": max_background_cpu, "busy_rounds": [r + 1 for r in busy],
            "latency_rounds": {"original": {"prefill_s": [x.prefill_s[0] for x in a],
                                            "decode_tok_s": [x.decode_tok_s[0] for x in a]},
                               "compressed": {"prefill_s": [x.prefill_s[0] for x in b],
                                              "decode_tok_s": [x.decode_tok_s[0] for x in b]}},
            "machine_busy": len(clean) < MIN_ROUNDS}


def compare(ref: Measurements, cand: Measurements, confidence: float = 0.95, seed: int = 0,
            max_background_cpu: float | None = None) -> dict[str, Any]:
    """Compute every metric both models' measurements allow; the rest are absent."""
    m: dict[str, Any] = {}
    if ref.scores is not None and cand.scores is not None:
        ppl_ref, ppl = perplexity_from_scores(ref.scores), perplexity_from_scores(cand.scores)
        m.update({"perplexity_original": ppl_ref, "perplexity": ppl, "ppl_increase_pct": 100.0 * (ppl / ppl_ref - 1.0),
                  "top1_agreement": top1_agreement(ref.scores, cand.scores), "kl": topk_kl(ref.scores, cand.scores),
                  "per_position": per_position(ref.scores, cand.scores)})
    if ref.generations is not None and cand.generations is not None:
        gm = greedy_match(ref.generations, cand.generations)
        m.update({"greedy_prefix_match": gm["prefix_match"], "greedy_exact_match": gm["exact_match"]})
    rounds = min(len(ref.latency), len(cand.latency))
    layouts = [(r.runtime or {}).get("parallel") for r in (ref, cand)]
    if layouts[1] is not None:
        m["parallel"] = layouts[1]
    if rounds and layouts[0] != layouts[1]:
        # a speed ratio between two parallel layouts measures the layouts, not the compression
        m["speed_not_compared"] = f"parallel layouts differ: original {layouts[0]}, compressed {layouts[1]}"
        rounds = 0
    if rounds:
        a, b = ref.latency[:rounds], cand.latency[:rounds]
        m["latency_original"], m["latency"] = summarize_latency(_merge(a)), summarize_latency(_merge(b))
        m.update(_speedups(a, b, confidence, seed, max_background_cpu))
    if ref.size_bytes is not None and cand.size_bytes is not None:
        m.update({"size_bytes_original": ref.size_bytes, "size_bytes": cand.size_bytes,
                  "size_ratio": cand.size_bytes / max(ref.size_bytes, 1)})
    if ref.tasks is not None and cand.tasks is not None:
        m["tasks"] = compare_tasks(ref.tasks, cand.tasks, confidence)
    if cand.runtime is not None:
        m["runtime"] = cand.runtime
    if ref.runtime is not None:
        m["runtime_original"] = ref.runtime
    return m


def check_budgets(metrics: dict[str, Any], budgets: Budgets, failure: VerifyFailure | None = None) -> list[BudgetResult]:
    """Apply every set budget; speed budgets use the interval, and an unmeasured metric is an error."""
    results = []
    for name, (key, kind, fmt) in BUDGET_METRICS.items():
        limit = getattr(budgets, name)
        if limit is None:
            continue
        value = metrics.get(key)
        if value is None or not np.isfinite(value):
            why = (f"the {failure.model} model's {failure.step} failed: {failure.message.splitlines()[0]}"
                   if failure else metrics.get("speed_not_compared") if name in SPEED_BUDGETS
                   and metrics.get("speed_not_compared") else "the runtime returned no usable value")
            results.append(BudgetResult(name, limit, None, "error", f"{key} was not measured ({why})"))
            continue
        sign = "<=" if kind == "max" else ">="
        detail = f"{key} = {fmt.format(value)} (needs {sign} {fmt.format(limit)})"
        if name in SPEED_BUDGETS:
            results.append(_speed_budget(name, limit, value, metrics, fmt, detail))
            continue
        passed = value <= limit if kind == "max" else value >= limit
        if not passed:
            detail += f"; missed by {fmt.format(abs(value - limit))}"
        results.append(BudgetResult(name, limit, float(value), "pass" if passed else "fail", detail))
    for key, limit in budgets.max_drop.items():
        results.append(_drop_budget(key, limit, (metrics.get("tasks") or {}).get(key), failure))
    return results


def _drop_budget(key: str, limit: float, task: dict[str, Any] | None, failure: VerifyFailure | None) -> BudgetResult:
    """max_drop.<task>.<metric>: the interval of the drop against the limit, as for speed (noise is inconclusive)."""
    name = f"max_drop.{key}"
    if task is None:
        why = (f"the {failure.model} model's {failure.step} failed: {failure.message.splitlines()[0]}" if failure
               else "no evaluator reported it for both models")
        return BudgetResult(name, limit, None, "error", f"{key} was not measured ({why})")
    drop, ci = float(task["drop"]), task["drop_ci"]
    detail = (f"{key}: {task['original']:.4f} -> {task['compressed']:.4f}, drop {drop:+.4f} (needs <= {limit:.4f})")
    if ci is None:  # no standard error: the point value decides, and the report says so
        status = "pass" if drop <= limit else "fail"
        return BudgetResult(name, limit, drop, status, detail + "; no standard error, so the noise is unknown")
    status = judge_interval(ci[0], ci[1], limit, "max")
    detail += (f", {task['confidence']:.0%} interval [{ci[0]:+.4f}, {ci[1]:+.4f}]"
               + (f" over {task['items']} paired items" if task["paired"] and task["items"] else ""))
    if status == "inconclusive":
        detail += "; the interval straddles the limit: the drop is within the noise (more items would settle it)"
    elif status == "fail":
        detail += f"; missed by {ci[0] - limit:.4f} at the interval's low end"
    return BudgetResult(name, limit, drop, status, detail, [float(ci[0]), float(ci[1])])


def _speed_budget(name: str, limit: float, value: float, metrics: dict[str, Any], fmt: str, detail: str) -> BudgetResult:
    low, high = metrics[SPEED_BUDGETS[name]]
    sp = Speedup(value, low, high, 0.0, int(metrics["speedup_rounds"]), [])
    status = judge(sp, limit)
    detail += f", interval [{fmt.format(low)}, {fmt.format(high)}] over {sp.rounds} rounds"
    busy, more = metrics.get("busy_rounds") or [], None
    if metrics.get("machine_busy"):
        status = "inconclusive"  # neither a pass nor a fail: the timings measure the load
        detail += (f"; the machine was busy: in {len(busy)} of {metrics['timing_rounds']} rounds other processes "
                   f"took more than {metrics['max_background_cpu']:.0%} of the machine's CPU while a model was timed, so "
                   "the timings measure the load, not the model (verify on an idle machine)")
        return BudgetResult(name, limit, float(value), status, detail, [low, high], None)
    if busy:
        detail += f" ({len(busy)} round(s) left out: other processes were busy on the CPU)"
    if status == "inconclusive":
        more = rounds_to_settle(sp, limit)
        detail += ("; the interval straddles the threshold: inconclusive"
                   + (f" (about {more} more rounds would settle it: verify.latency.rounds)" if more
                      else " (the estimate sits on the threshold)"))
    elif status == "fail":
        detail += f"; missed by {fmt.format(limit - value)}"
    return BudgetResult(name, limit, float(value), status, detail, [low, high], more)


def export_status(budgets: list[BudgetResult], failure: VerifyFailure | None, on_inconclusive: str) -> str:
    """One export's verdict: error, fail or pass (inconclusive counts as fail unless the recipe says warn)."""
    if failure is not None or any(b.status == "error" for b in budgets):
        return "error"
    blocking = {"fail", "inconclusive"} if on_inconclusive == "fail" else {"fail"}
    return "fail" if any(b.status in blocking for b in budgets) else "pass"


def verify_export(exporter: Exporter, options: Any, artifact: Path, reference_dir: Path, ref_options: Any,
                  windows: np.ndarray, prompts: list[list[int]], spec: VerifySpec, settings: RuntimeSettings,
                  log: Callable[[str], None], seed: int = 0, evaluators: list[Any] | None = None,
                  tokenizer: Any = None) -> dict[str, Any]:
    """Measure the reference export (already written to ``reference_dir``) and the artifact; apply budgets."""
    log(f"measuring the original and the compressed model in {exporter.runtime_name or exporter.name}")
    eval_ctx = EvaluationContext(tokenizer=tokenizer, max_len=settings.max_len, seed=seed, log=log)
    meas, failure = measure_pair(exporter, options, ref_options, artifact, reference_dir, windows, prompts, spec,
                                 settings, log, evaluators, eval_ctx)
    metrics = compare(meas["original"], meas["compressed"], spec.latency.confidence, seed,
                      spec.latency.max_background_cpu)
    budgets = check_budgets(metrics, spec.budgets, failure)
    status = export_status(budgets, failure, spec.latency.on_inconclusive)
    return {"status": status, "passed": status == "pass", "metrics": metrics,
            "budgets": [b.to_dict() for b in budgets], "error": failure.to_dict() if failure else None,
            "reference": {"mode": spec.reference, "options": ref_options.model_dump(mode="json"),
                          "differs_in": options_diff(options, ref_options)},
            "on_inconclusive": spec.latency.on_inconclusive}


def overall_verdict(results: dict[str, dict[str, Any]]) -> str:
    """error when any export's measurement failed, else fail when any budget failed, else pass."""
    statuses = {v["status"] for v in results.values()}
    return "error" if "error" in statuses else "fail" if "fail" in statuses else "pass"


def failure_lines(results: dict[str, dict[str, Any]]) -> tuple[list[str], list[str]]:
    """The budgets that decided a fail, and the measurements that could not be taken, one line each."""
    failed = [f"{name}: {b['detail']}" for name, v in results.items() for b in v["budgets"]
              if v["status"] == "fail" and b["status"] in ("fail", "inconclusive")]
    errors = []
    for name, v in results.items():
        err = v.get("error")
        if err:
            first = err["message"].splitlines()[0] if err.get("message") else err.get("error_type", "?")
            errors.append(f"{name}: the {err['model']} model's {err['step']} failed: {first}")
    return failed, errors


def write_artifact_info(dest: Path, info: dict[str, Any]) -> None:
    """Record what an export directory holds, so that `compress verify` can reopen it."""
    (dest / ARTIFACT_FILE).write_text(json.dumps(info, indent=2, default=str))


def vocabulary_record(model: Any) -> dict[str, Any]:
    """The vocabulary size and a hash of the tokenizer's token-to-id map, to match an artifact to its original."""
    import hashlib

    record: dict[str, Any] = {"vocab_size": int(model.config.vocab_size)}
    if model.tokenizer is not None:
        vocab = sorted(model.tokenizer.get_vocab().items())
        record["tokenizer_sha256"] = hashlib.sha256(json.dumps(vocab).encode()).hexdigest()
    return record


def artifact_vocabulary(artifact: Path, info: dict[str, Any]) -> dict[str, Any]:
    """What the artifact says about its vocabulary: its compressor record, else a config.json beside it."""
    if "vocab_size" in info:
        return {k: info[k] for k in ("vocab_size", "tokenizer_sha256") if k in info}
    config = Path(artifact) / "config.json"
    try:
        return {"vocab_size": int(json.loads(config.read_text())["vocab_size"])}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def check_same_vocabulary(artifact: Path, info: dict[str, Any], original: Any, original_ref: str) -> None:
    """Refuse to compare an artifact with an original whose vocabulary or tokenizer differs (exit 3)."""
    from compressor.errors import InputError

    theirs, ours = artifact_vocabulary(artifact, info), vocabulary_record(original)
    hint = "pass the model this artifact was built from as --original"
    if "vocab_size" in theirs and theirs["vocab_size"] != ours["vocab_size"]:
        raise InputError(f"{artifact} has a vocabulary of {theirs['vocab_size']} tokens but --original "
                         f"{original_ref} has {ours['vocab_size']}: it was built from another model", hint=hint)
    if theirs.get("tokenizer_sha256") and ours.get("tokenizer_sha256") \
            and theirs["tokenizer_sha256"] != ours["tokenizer_sha256"]:
        raise InputError(f"{artifact} was built with another tokenizer than --original {original_ref}'s "
                         "(same vocabulary size, different tokens)", hint=hint)


def read_artifact_info(artifact: Path) -> dict[str, Any]:
    """Read an export directory's record, or raise a clear error."""
    from compressor.errors import InputError

    path = Path(artifact) / ARTIFACT_FILE
    if not path.is_file():
        raise InputError(f"{artifact} is not a compressor artifact (no {ARTIFACT_FILE})",
                         hint="pass one export subdirectory of a `compress build` output, or give --format")
    return json.loads(path.read_text())
