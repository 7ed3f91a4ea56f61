"""max_drop.<task>.<metric> budgets: the drop's interval decides, as for speed; noise is inconclusive."""

from __future__ import annotations

import pytest

from compressor.api import TaskScore
from compressor.errors import RecipeError
from compressor.recipe import Budgets, VerifySpec
from compressor.task_metrics import compare_tasks
from compressor.verify import VerifyFailure, check_budgets


def _scores(hits: list[int]) -> dict[str, dict[str, TaskScore]]:
    n = len(hits)
    mean = sum(hits) / n
    se = (sum((h - mean) ** 2 for h in hits) / (n - 1)) ** 0.5 / n ** 0.5
    return {"mc": {"acc": TaskScore(mean, se, True, tuple(float(h) for h in hits))}}


def _judge(ref_hits, cand_hits, limit):
    metrics = {"tasks": compare_tasks(_scores(ref_hits), _scores(cand_hits), 0.95)}
    (budget,) = check_budgets(metrics, Budgets(max_drop={"mc.acc": limit}))
    return budget, metrics["tasks"]["mc.acc"]


def test_a_clear_drop_fails_and_says_by_how_much():
    ref = [1] * 80 + [0] * 20
    cand = [0] * 40 + [1] * 40 + [0] * 20  # lost 40 of the 80 items the original got right
    budget, task = _judge(ref, cand, 0.05)
    assert task["drop"] == pytest.approx(0.4) and task["paired"] and task["items"] == 100
    assert budget.status == "fail" and budget.interval[0] > 0.05 and "missed by" in budget.detail


def test_identical_answers_pass_any_limit_exactly():
    hits = [1, 0] * 50
    budget, task = _judge(hits, hits, 0.0)
    assert task["drop"] == 0 and task["drop_stderr"] == 0 and budget.status == "pass"


def test_a_drop_within_the_noise_is_inconclusive():
    ref = [1] * 50 + [0] * 50
    cand = [1] * 48 + [0, 0] + [0] * 50  # two items lost of a hundred: +0.02, well inside the interval
    budget, _ = _judge(ref, cand, 0.01)
    assert budget.status == "inconclusive" and "within the noise" in budget.detail
    assert budget.interval[0] < 0.01 < budget.interval[1]


def test_the_paired_error_is_tighter_than_the_unpaired_one():
    ref = [1] * 60 + [0] * 40
    cand = [1] * 55 + [0] * 45  # the same items, five flipped
    _, task = _judge(ref, cand, 0.1)
    unpaired = (_scores(ref)["mc"]["acc"].stderr ** 2 + _scores(cand)["mc"]["acc"].stderr ** 2) ** 0.5
    assert task["drop_stderr"] < unpaired / 2


def test_a_metric_where_lower_is_better_drops_when_it_rises():
    ref = {"ppl": {"word_perplexity": TaskScore(20.0, 0.5, False)}}
    cand = {"ppl": {"word_perplexity": TaskScore(30.0, 0.5, False)}}
    metrics = {"tasks": compare_tasks(ref, cand, 0.95)}
    (budget,) = check_budgets(metrics, Budgets(max_drop={"ppl.word_perplexity": 1.0}))
    assert metrics["tasks"]["ppl.word_perplexity"]["drop"] == pytest.approx(10.0) and budget.status == "fail"
    assert not metrics["tasks"]["ppl.word_perplexity"]["paired"]


def test_an_unmeasured_task_is_an_error_that_names_the_failed_step():
    failure = VerifyFailure("evaluator lm_eval", "compressed", "VerifyError", "the worker died")
    (budget,) = check_budgets({}, Budgets(max_drop={"mc.acc": 0.02}), failure)
    assert budget.status == "error" and "evaluator lm_eval failed" in budget.detail


@pytest.mark.parametrize("raw", [{"max_drop.mc.acc": 0.02}, {"max_drop": {"mc": {"acc": 0.02}}},
                                 {"max_drop": {"mc.acc": 0.02}}])
def test_the_three_spellings_of_a_drop_budget(raw):
    assert Budgets.model_validate(raw).max_drop == {"mc.acc": 0.02}


@pytest.mark.parametrize("raw", [{"max_drop": {"acc": 0.02}}, {"max_drop.mc.acc": -0.1}])
def test_a_malformed_drop_budget_is_refused(raw):
    with pytest.raises(ValueError):
        Budgets.model_validate(raw)


def test_a_drop_budget_needs_an_evaluator_that_reports_its_task():
    from compressor.plan import plan_evaluators
    from compressor.plugin_manager import load_registry

    registry = load_registry()
    with pytest.raises(RecipeError, match="needs an evaluator"):
        plan_evaluators(VerifySpec(budgets=Budgets(max_drop={"mc.acc": 0.1})), registry)
    spec = VerifySpec.model_validate({"budgets": {"max_drop": {"hellaswag.acc": 0.1}},
                                      "evaluators": [{"name": "lm_eval", "options": {"tasks": ["shakespeare_mc"]}}]})
    with pytest.raises(RecipeError, match="no evaluator reports task 'hellaswag'"):
        plan_evaluators(spec, registry)
    spec.evaluators[0].options["tasks"] = ["shakespeare_mc", "hellaswag"]
    assert [p.evaluator.name for p in plan_evaluators(spec, registry)] == ["lm_eval"]
