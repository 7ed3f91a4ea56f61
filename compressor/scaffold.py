"""``compress new-plugin``: a ready plugin package that installs, passes the conformance kit and builds.

The package has a pyproject.toml with the entry point and the supported API range, one module with
a small working implementation, a README, and a test module that runs the conformance kit on it.
It is written into a staging directory beside the target and renamed into place, so the target is
complete or absent.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Literal

from compressor.errors import UsageError

Kind = Literal["method", "exporter", "evaluator"]
NAME = re.compile(r"^[a-z][a-z0-9_]{1,40}$")
API_RANGE = ">=1.1,<2"  # 1.1 added evaluators

PYPROJECT = '''[build-system]
requires = ["setuptools>=70.1"]
build-backend = "setuptools.build_meta"

[project]
name = "compressor-{dist}"
version = "0.1.0"
description = "{summary}"
requires-python = ">=3.10"
dependencies = ["compressor"]

# compressor finds the plugin through this entry point, as it finds its own built-in plugins
[project.entry-points.compressor]
{name} = "compressor_{name}"

[tool.setuptools]
py-modules = ["compressor_{name}"]
'''

METHOD = '''"""{summary} (a compressor method plugin made by `compress new-plugin`)."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from compressor import hookimpl
from compressor.api import Kind, Method, ModelHandle, PluginOptions, StageContext

# the compressor.api versions this plugin works with (the host refuses it outside this range)
COMPRESSOR_API = "{api}"


class Options(PluginOptions):
    """Options of the `{name}` method (unknown keys are refused)."""

    sparsity: float = Field(0.5, gt=0, lt=1, description="share of each row's weights to zero, smallest first")


class {cls}(Method):
    """Zero the smallest-magnitude weights of every decoder linear, row by row."""

    name = "{name}"
    stage = "prune"
    summary = "{summary}"
    Options = Options

    def kinds(self, options: Options) -> frozenset[Kind]:
        return frozenset({{Kind.UNSTRUCTURED}})

    def apply(self, model: ModelHandle, options: Options, ctx: StageContext) -> dict[str, Any]:
        zeroed = total = 0
        with torch.no_grad():
            for i in range(model.num_layers):
                for linear in model.linears(i).values():
                    w = linear.weight
                    k = int(w.shape[1] * options.sparsity)
                    if k:
                        idx = w.abs().argsort(dim=1)[:, :k]
                        w.scatter_(1, idx, 0.0)
                    zeroed += int((w == 0).sum())
                    total += w.numel()
        return {{"sparsity": round(zeroed / max(total, 1), 6)}}


@hookimpl
def register_methods(register):  # type: ignore[no-untyped-def]
    """Register the `{name}` method."""
    register({cls})
'''

EXPORTER = '''"""{summary} (a compressor exporter plugin made by `compress new-plugin`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from compressor import hookimpl
from compressor.api import (Benefit, Exporter, Kind, ModelHandle, PluginOptions, Runtime, RuntimeSettings,
                            TorchRuntime)

# the compressor.api versions this plugin works with (the host refuses it outside this range)
COMPRESSOR_API = "{api}"
SHRINKS = {{Kind.DEPTH, Kind.WIDTH, Kind.HEADS}}  # what makes this runtime (PyTorch) faster and smaller


class Options(PluginOptions):
    """Options of the `{name}` exporter (unknown keys are refused)."""

    dtype: str = Field("float32", pattern="^(float32|bfloat16)$", description="dtype of the saved weights")


class {cls}(Exporter):
    """A Hugging Face safetensors directory, run in PyTorch."""

    name = "{name}"
    runtime_name = "pytorch"
    summary = "{summary}"
    Options = Options

    def benefits(self, options: Options) -> dict[Kind, Benefit]:
        return {{k: Benefit(k in SHRINKS, k in SHRINKS, "" if k in SHRINKS else "stored dense") for k in Kind}}

    def reference_options(self, options: Options) -> Options:
        return Options(dtype="float32")

    def check_model(self, model: ModelHandle, options: Options) -> None:
        return None

    def export(self, model: ModelHandle, dest: Path, options: Options) -> dict[str, Any]:
        model.save_hf(dest, dtype=getattr(torch, options.dtype))
        return {{"dtype": options.dtype}}

    def open_runtime(self, artifact: Path, options: Options, settings: RuntimeSettings) -> Runtime:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(artifact, dtype=torch.float32).eval()
        return TorchRuntime(model)

    def runtime_versions(self) -> dict[str, str]:
        return {{"torch": torch.__version__}}


@hookimpl
def register_exporters(register):  # type: ignore[no-untyped-def]
    """Register the `{name}` exporter."""
    register({cls})
'''

EVALUATOR = '''"""{summary} (a compressor evaluator plugin made by `compress new-plugin`)."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field

from compressor import hookimpl
from compressor.api import EvaluationContext, Evaluator, PluginOptions, Runtime, TaskScore

# the compressor.api versions this plugin works with (the host refuses it outside this range)
COMPRESSOR_API = "{api}"
TASK = "{name}"
SENTENCES = [  # the task's items: replace them with your own held-out text
    "The quick brown fox jumps over the lazy dog.",
    "A journey of a thousand miles begins with a single step.",
    "All that glitters is not gold.",
    "The early bird catches the worm, but the second mouse gets the cheese.",
    "Rome was not built in a day.",
    "Actions speak louder than words.",
]


class Options(PluginOptions):
    """Options of the `{name}` evaluator (unknown keys are refused)."""

    max_length: int = Field(64, ge=8, description="tokens per sentence at most")


class {cls}(Evaluator):
    """Next-token top-1 accuracy over a few sentences, one item per sentence."""

    name = "{name}"
    summary = "{summary}"
    Options = Options

    def tasks(self, options: Options) -> list[str]:
        return [TASK]

    def max_len(self, options: Options) -> int:
        return options.max_length

    def evaluate(self, runtime: Runtime, options: Options, ctx: EvaluationContext) -> dict[str, dict[str, TaskScore]]:
        per_item = []
        for sentence in SENTENCES:
            ids = list(ctx.tokenizer.encode(sentence, add_special_tokens=False))[:options.max_length]
            scores = runtime.score(np.asarray([ids], dtype=np.int64), 1)
            per_item.append(float((scores.topk_ids[0, :, 0] == np.asarray(ids[1:])).mean()))
        values = np.asarray(per_item)
        stderr = float(values.std(ddof=1) / np.sqrt(len(values)))
        return {{TASK: {{"acc": TaskScore(float(values.mean()), stderr, True, tuple(per_item))}}}}


@hookimpl
def register_evaluators(register):  # type: ignore[no-untyped-def]
    """Register the `{name}` evaluator."""
    register({cls})
'''

TESTS = '''"""The compressor conformance kit on this plugin (run: pytest)."""

from compressor.conformance.kit import *  # noqa: F401,F403 - the kit's checks

COMPRESSOR_PLUGIN = "{name}"
'''

README = '''# compressor-{dist}

{summary}. A compressor {kind} plugin, made by `compress new-plugin {name} --kind {kind}`.

    pip install -e .
    compress plugins                 # lists `{name}` with its API range
    pytest                           # the conformance kit on this plugin
{usage}
The plugin declares `COMPRESSOR_API = "{api}"`; compressor refuses it outside that range.
'''

USAGE = {
    "method": "    compress build --model DIR --method {name} -O sparsity=0.5 --export transformers --out OUT\n",
    "exporter": "    compress build --model DIR --method magnitude --export {name} --out OUT\n",
    "evaluator": "    compress build --model DIR --method magnitude --export transformers --evaluator {name} \\\n"
                 "        --set verify.budgets.max_drop.{name}.acc=0.05 --out OUT\n",
}
SUMMARY = {"method": "Unstructured magnitude pruning, row by row", "exporter": "A safetensors directory run in PyTorch",
           "evaluator": "Next-token accuracy on a few sentences"}
TEMPLATES = {"method": METHOD, "exporter": EXPORTER, "evaluator": EVALUATOR}


def new_plugin(name: str, kind: Kind, parent: Path) -> Path:
    """Write the package ``compressor-NAME`` under ``parent``; return its directory."""
    if not NAME.match(name):
        raise UsageError(f"plugin name {name!r} is not a lower-case Python identifier of 2-41 characters",
                         hint="use letters, digits and underscores, starting with a letter (e.g. my_pruner)")
    if kind not in USAGE:
        raise UsageError(f"unknown plugin kind {kind!r}", hint="use --kind method, exporter or evaluator")
    dist = name.replace("_", "-")
    target = Path(parent) / f"compressor-{dist}"
    if target.exists():
        raise UsageError(f"{target} already exists", hint="choose another name or --dir, or remove it")
    fields = {"name": name, "dist": dist, "kind": kind, "api": API_RANGE, "summary": SUMMARY[kind],
              "cls": "".join(p.capitalize() for p in name.split("_"))}
    Path(parent).mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=parent))
    try:
        (stage / "pyproject.toml").write_text(PYPROJECT.format(**fields))
        (stage / f"compressor_{name}.py").write_text(TEMPLATES[kind].format(**fields))
        (stage / "tests").mkdir()
        (stage / "tests" / f"test_{name}_conformance.py").write_text(TESTS.format(**fields))
        (stage / "README.md").write_text(README.format(**fields, usage=USAGE[kind].format(**fields)))
        os.rename(stage, target)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return target
