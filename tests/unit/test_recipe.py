"""Recipe validation: unknown keys list the valid ones, ranges are enforced, CLI assignments merge."""

from __future__ import annotations

from pathlib import Path

import pytest

from compressor.errors import RecipeError
from compressor.recipe import parse_assignment, recipe_from_dict, set_path


def test_defaults_are_valid():
    recipe = recipe_from_dict({})
    assert recipe.model == "smollm2-135m" and recipe.export[0].format == "vllm"


def test_unknown_top_level_key_lists_valid_keys():
    with pytest.raises(RecipeError) as exc:
        recipe_from_dict({"modle": "x"})
    assert "modle: unknown key" in str(exc.value) and "model" in str(exc.value) and "prune" in str(exc.value)


def test_unknown_nested_key_lists_valid_keys():
    with pytest.raises(RecipeError) as exc:
        recipe_from_dict({"prune": [{"method": "layer_drop", "opts": {}}]})
    assert "prune.0.opts: unknown key; valid keys here: method, options" in str(exc.value)
    with pytest.raises(RecipeError, match="max_ppl_increase_pct"):
        recipe_from_dict({"verify": {"budgets": {"max_ppl": 3}}})


@pytest.mark.parametrize("raw,needle", [
    ({"verify": {"budgets": {"min_top1_agreement": 1.5}}}, "less than or equal to 1"),
    ({"data": {"calibration": {"samples": 0}}}, "greater than or equal to 1"),
    ({"dtype": "int3"}, "dtype"),
    ({"export": [{"format": "vllm"}, {"format": "vllm"}]}, "same directory"),
])
def test_out_of_range_values_are_errors(raw, needle):
    with pytest.raises(RecipeError, match=needle):
        recipe_from_dict(raw)


def test_set_path_and_assignment_parsing():
    raw: dict = {}
    set_path(raw, "prune.0.options.layers", parse_assignment("layers=4")[1])
    set_path(raw, "prune.0.method", "layer_drop")
    set_path(raw, "verify.budgets.min_speedup", parse_assignment("x=1.2")[1])
    recipe = recipe_from_dict(raw)
    assert recipe.prune[0].options == {"layers": 4}
    assert recipe.verify.budgets.min_speedup == 1.2
    with pytest.raises(RecipeError):
        parse_assignment("novalue")


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[2] / "deploy" / "recipes").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_recipes_are_valid(path):
    from compressor.plugin_manager import load_registry
    from compressor.recipe import load_recipe_dict, recipe_from_dict

    recipe = recipe_from_dict(load_recipe_dict(path), where=str(path))
    registry = load_registry()
    assert recipe.prune
    for stage in recipe.prune:
        registry.method(stage.method).Options(**stage.options)
