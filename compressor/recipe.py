"""The build recipe: a YAML file validated with pydantic, every field also settable from the CLI."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, AliasChoices, BaseModel, ConfigDict, Field, ValidationError, model_validator

from compressor.errors import RecipeError


# the devices a stage or a runtime can be put on; preflight checks that CUDA is really there
DEVICE_PATTERN = re.compile(r"^(cpu|cuda(:[0-9]+)?)$")


def _check_device(value: str) -> str:
    if not DEVICE_PATTERN.match(value):
        raise ValueError(f"device must be cpu, cuda or cuda:N, not {value!r}")
    return value


Device = Annotated[str, AfterValidator(_check_device)]
# an export's subdirectory: one plain path component, never `..`, a slash or a hidden name
EXPORT_NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSpec(_Strict):
    """One data set: a built-in corpus name, a .txt/.jsonl/.npy file or a folder."""

    source: str = Field("shakespeare", description="'shakespeare', or a .txt/.jsonl/.npy file or a folder")
    samples: int | None = Field(None, ge=1, le=100_000, description="number of windows (default 32)")
    seq_len: int | None = Field(None, ge=8, le=131_072, description="tokens per window (default 512)")


class DataConfig(_Strict):
    """Calibration data (for methods that need it), held-out evaluation data (for verify), heal training data."""

    calibration: DataSpec = DataSpec(samples=32, seq_len=512)
    evaluation: DataSpec = DataSpec(samples=16, seq_len=512)
    heal: DataSpec = Field(DataSpec(samples=512, seq_len=256),
                           description="training text of a heal stage; never the evaluation windows (for "
                                       "'shakespeare': the calibration plays, other windows than calibration's)")


class StageSpec(_Strict):
    """One prune, heal or quantize stage: a method name and its options."""

    method: str
    options: dict[str, Any] = Field(default_factory=dict)


class ExportSpec(_Strict):
    """One export: a format (exporter name), a subdirectory name and exporter options."""

    format: str = Field(pattern=EXPORT_NAME_PATTERN)
    name: str | None = Field(None, pattern=EXPORT_NAME_PATTERN, description="output subdirectory (default: the format)")
    options: dict[str, Any] = Field(default_factory=dict)

    @property
    def dirname(self) -> str:
        """The subdirectory this export is written to."""
        return self.name or self.format


class Budgets(_Strict):
    """Pass/fail limits checked by verify; an unset budget is reported but never fails."""

    max_ppl_increase_pct: float | None = Field(None, ge=0, description="max perplexity increase, percent")
    min_top1_agreement: float | None = Field(None, ge=0, le=1, description="min next-token argmax agreement")
    max_kl: float | None = Field(None, ge=0, description="max mean KL(original || compressed), nats")
    min_greedy_match: float | None = Field(None, ge=0, le=1, description="min mean greedy prefix agreement")
    min_speedup: float | None = Field(None, gt=0, description="min decode tokens/s ratio (compressed/original)")
    min_prefill_speedup: float | None = Field(None, gt=0, description="min prefill throughput ratio")
    max_size_ratio: float | None = Field(None, gt=0, description="max artifact size ratio on disk")
    max_drop: dict[str, float] = Field(
        default_factory=dict, description="per evaluator metric `<task>.<metric>`: the largest drop (original minus "
                                          "compressed, in the metric's units) the release may show")

    @model_validator(mode="before")
    @classmethod
    def _gather_max_drop(cls, data: Any) -> Any:
        """Accept `max_drop.<task>.<metric>: x` as a flat key, and nested mappings, as `max_drop[<task>.<metric>]`."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        drops: dict[str, Any] = {}

        def gather(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for k, v in value.items():
                    gather(f"{prefix}.{k}" if prefix else str(k), v)
            else:
                drops[prefix] = value

        gather("", data.pop("max_drop", None) or {})
        for key in [k for k in data if isinstance(k, str) and k.startswith("max_drop.")]:
            gather(key[len("max_drop."):], data.pop(key))
        bad = [k for k in drops if k.count(".") < 1 or not all(k.split("."))]
        if bad:
            raise ValueError(f"max_drop keys are `<task>.<metric>` (e.g. shakespeare_mc.acc), not {', '.join(bad)}")
        data["max_drop"] = drops
        return data

    @model_validator(mode="after")
    def _drops_not_negative(self) -> Budgets:
        negative = [k for k, v in self.max_drop.items() if v < 0]
        if negative:
            raise ValueError(f"max_drop.{negative[0]} must be >= 0")
        return self


class LatencySpec(_Strict):
    """How latency is measured: one sequence of fixed lengths, both models in interleaved rounds."""

    prompt_tokens: int = Field(128, ge=1)
    new_tokens: int = Field(64, ge=2)
    rounds: int = Field(8, ge=3, le=1000, validation_alias=AliasChoices("rounds", "repeats"),
                        description="timing rounds; each times the original and the compressed model once, "
                                    "in alternating order (A B, B A, ...); `repeats` is accepted as an alias")
    warmup: int = Field(1, ge=0, description="untimed runs of each model before the first round")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="confidence level of the speed-up interval")
    on_inconclusive: Literal["fail", "warn"] = Field(
        "fail", description="what a speed budget whose interval straddles its threshold does to the verdict")
    suspend_idle: bool = Field(True, description="stop (SIGSTOP) the model not being timed, so that an idle "
                                                 "runtime's threads cannot slow the timed one")
    max_background_cpu: float | None = Field(
        0.1, ge=0, le=1, description="a timing round in which other processes took more than this share of the "
                                     "machine's CPU is left out of the speed-ups (null: keep every round)")


class EvaluatorSpec(_Strict):
    """One evaluator verify runs on both models in each export's runtime: a name and its options."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)


DEFAULT_PROMPTS = [
    "The capital of France is",
    "To be, or not to be, that is",
    "Once upon a time, in a small village,",
    "The three primary colours are",
]


class VerifySpec(_Strict):
    """The verify gate: measurements against the original model in each export's runtime."""

    enabled: bool = True
    budgets: Budgets = Budgets()
    latency: LatencySpec = LatencySpec()
    prompts: list[str] = Field(default_factory=lambda: list(DEFAULT_PROMPTS))
    generate_tokens: int = Field(16, ge=1, le=4096)
    top_k: int = Field(20, ge=1, le=1000, description="top-k logprobs used for agreement and KL")
    evaluators: list[EvaluatorSpec] = Field(
        default_factory=list, description="task evaluators (e.g. lm_eval) run in each export's runtime on both models; "
                                          "gate on them with budgets max_drop.<task>.<metric>")
    device: Device = Field("cpu", description="cpu, cuda or cuda:N")
    reference: Literal["full_precision", "same_options"] = Field(
        "full_precision", description="full_precision: the original is exported without the exporter's "
                                      "precision/quantization options (so exporter quantization is measured); "
                                      "same_options: with the compressed export's options")


class Recipe(_Strict):
    """Everything ``compress build`` does, in order."""

    model: str = "smollm2-135m"
    allow_pickle: bool = False
    trust_remote_code: bool = False
    seed: int = 0
    device: Device = Field("cpu", description="cpu, cuda or cuda:N")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    offload: Literal["auto", "none", "cpu", "disk"] = Field(
        "auto", description="where the weights not being worked on stay: none (all in RAM), cpu (RAM; one layer "
                            "at a time on the device), disk (memory-mapped from the input safetensors), or auto "
                            "(disk when the model would not fit in RAM)")
    strict: bool = Field(False, description="fail when a compression gives no benefit on a target")
    data: DataConfig = DataConfig()
    prune: list[StageSpec] = Field(default_factory=list)
    heal: StageSpec | None = Field(None, description="a heal method (e.g. distill) run after the prune stages and "
                                                     "before quantize")
    quantize: StageSpec | None = None
    export: list[ExportSpec] = Field(default_factory=lambda: [ExportSpec(format="vllm")])
    verify: VerifySpec = VerifySpec()

    @model_validator(mode="after")
    def _unique_export_dirs(self) -> Recipe:
        names = [e.dirname for e in self.export]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"two exports write to the same directory {dupes}; give them distinct `name`s")
        return self


def _format_errors(exc: ValidationError, where: str) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"{loc}: unknown key; valid keys here: {', '.join(_valid_keys(err['loc']))}")
        else:
            lines.append(f"{loc}: {err['msg']}")
    return f"invalid recipe{where}:\n  " + "\n  ".join(lines)


def _valid_keys(loc: tuple[Any, ...]) -> list[str]:
    model: Any = Recipe
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if field is None:
            return []
        ann = field.annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            for c in candidates:  # list[StageSpec] and similar
                inner = [a for a in getattr(c, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
                if inner:
                    model = inner[0]
                    break
        if model is None:
            return []
    return sorted(model.model_fields)


def recipe_from_dict(raw: dict[str, Any], where: str = "") -> Recipe:
    """Validate a raw mapping into a :class:`Recipe`, turning errors into one readable message."""
    if not isinstance(raw, dict):
        raise RecipeError(f"the recipe{where} must be a mapping, got {type(raw).__name__}")
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        raise RecipeError(_format_errors(exc, where), hint="see the recipe reference in the README") from None


def load_recipe_dict(path: Path) -> dict[str, Any]:
    """Read a YAML recipe file into a mapping."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipeError(f"recipe file {path} does not exist") from None
    except IsADirectoryError:
        raise RecipeError(f"recipe file {path} is a directory", hint="pass the recipe's YAML file") from None
    except UnicodeDecodeError:
        raise RecipeError(f"recipe file {path} is not UTF-8 text", hint="pass a YAML file") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"recipe file {path} is not valid YAML: {exc}",
                          hint="fix the YAML at the line shown; the README has a complete recipe") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise RecipeError(f"recipe file {path} holds a YAML {type(raw).__name__}, not a mapping of recipe keys",
                          hint="a recipe looks like `model: ...` / `prune: [...]` / `export: [...]`; see the README")
    return raw


def set_path(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.0.c`` in a nested mapping/list structure, creating mappings and list slots."""
    parts = dotted.split(".")
    node: Any = raw
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        nxt: Any = [] if not last and parts[i + 1].isdigit() else {}
        if isinstance(node, list):
            if not part.isdigit():
                raise RecipeError(f"--set {dotted}: {part!r} must be a list index")
            idx = int(part)
            while len(node) <= idx:
                node.append({})
            if last:
                node[idx] = value
            else:
                if not isinstance(node[idx], (dict, list)):
                    node[idx] = nxt
                node = node[idx]
        else:
            if last:
                node[part] = value
            else:
                if not isinstance(node.get(part), (dict, list)):
                    node[part] = nxt
                node = node[part]


def parse_assignment(text: str) -> tuple[str, Any]:
    """Split ``key=value``, parsing the value as YAML (so 4 is an int and true a bool)."""
    if "=" not in text:
        raise RecipeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        parsed = yaml.safe_load(value) if value != "" else ""
    except yaml.YAMLError:
        parsed = value
    return key.strip(), parsed


def dump_recipe(recipe: Recipe) -> dict[str, Any]:
    """Return the fully resolved recipe as plain data, for the manifest."""
    return recipe.model_dump(mode="json")
