"""Where the lm_eval evaluator's task configs come from: shipped YAMLs, local YAML files, lm-eval's registry.

A local task file names its data with ``dataset_path: json`` and ``dataset_kwargs.data_files``; a
relative path there is taken beside the YAML (lm-eval itself would read it from the working
directory), so a task folder works wherever it is copied and needs no network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from compressor.api import InputError

TASKS_DIR = Path(__file__).resolve().parent
SHIPPED = {p.stem: p for p in TASKS_DIR.glob("*.yaml")}  # shakespeare_mc


def load_task_file(path: Path) -> dict[str, Any]:
    """A task YAML as a config dict, its relative data_files resolved against the YAML's folder."""
    try:
        config = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise InputError(f"lm_eval task file {path} is not plain YAML: {exc}",
                         hint="a task that uses !function tags goes in a folder given as include_path") from None
    if not isinstance(config, dict) or "task" not in config:
        raise InputError(f"lm_eval task file {path} has no `task:` name", hint="see lm-eval's task guide")
    files = (config.get("dataset_kwargs") or {}).get("data_files")
    if files is not None:
        config["dataset_kwargs"] = {**config["dataset_kwargs"], "data_files": _beside(files, Path(path).parent)}
    return config


def _beside(files: Any, folder: Path) -> Any:
    """data_files (a path, a list of paths, or a mapping of split to either) with relative paths taken in ``folder``."""
    if isinstance(files, dict):
        return {split: _beside(f, folder) for split, f in files.items()}
    if isinstance(files, str):
        return files if Path(files).is_absolute() else str((folder / files).resolve())
    return [_beside(f, folder) for f in files]


def task_configs(names: list[str], files: list[Path]) -> tuple[list[dict[str, Any]], list[str]]:
    """Config dicts for the named tasks that are shipped or in ``files``; the other names go to lm-eval."""
    local = dict(SHIPPED)
    for path in files:
        local[load_task_file(path)["task"]] = path
    configs = [load_task_file(local[n]) for n in names if n in local]
    return configs, [n for n in names if n not in local]
