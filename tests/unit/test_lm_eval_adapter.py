"""The lm_eval evaluator's LM adapter gives lm-eval's own Hugging Face backend's answers, request by request.

Both run the same tiny Llama: lm-eval's HFLM directly, the adapter through compressor's TorchRuntime
(the runtime protocol every exporter implements). The per-runtime comparison on SmolLM2 is in
tests/integration/test_lm_eval_runtimes.py.
"""

from __future__ import annotations

import lm_eval
import pytest
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

from compressor.api import EvaluationContext
from compressor.torch_runtime import TorchRuntime

TEXT = ("To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer "
        "the slings and arrows of outrageous fortune, or to take arms against a sea of troubles")


@pytest.fixture(scope="module")
def pair(tiny_model_dir):
    """lm-eval's HFLM and the adapter over TorchRuntime, on the same tiny model, with a 24-token window."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from compressor_evaluators.lm_harness.adapter import RuntimeLM

    hf = HFLM(pretrained=str(tiny_model_dir), device="cpu", batch_size=4, max_length=24)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ours = RuntimeLM(TorchRuntime(model), AutoTokenizer.from_pretrained(tiny_model_dir), max_length=24, batch_size=3)
    return hf, ours


def _requests(kind, args):
    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


def test_loglikelihood_matches_lm_evals_hf_backend(pair):
    hf, ours = pair
    args = [("To be, or not", " to be"), ("whether 'tis nobler", " in the mind to suffer"), ("", "Hamlet"),
            (TEXT, " of outrageous"), ("the question:", " whether")]  # one longer than the window: left-truncated
    want, got = hf.loglikelihood(_requests("loglikelihood", args)), ours.loglikelihood(_requests("loglikelihood", args))
    assert [g for _, g in got] == [g for _, g in want]
    assert [lp for lp, _ in got] == pytest.approx([lp for lp, _ in want], abs=1e-4)
    assert len({round(lp, 3) for lp, _ in got}) == len(args)  # distinct requests, not one value repeated


def test_loglikelihood_rolling_matches_over_several_windows(pair):
    hf, ours = pair
    args = [(TEXT,), (TEXT[:40],)]  # the first spans several 24-token windows
    want = hf.loglikelihood_rolling(_requests("loglikelihood_rolling", args))
    got = ours.loglikelihood_rolling(_requests("loglikelihood_rolling", args))
    assert got == pytest.approx(want, abs=1e-3)


def test_generate_until_matches_and_stops_at_the_stop_string(pair):
    hf, ours = pair
    kwargs = {"until": ["e"], "max_gen_toks": 6, "do_sample": False}
    args = [("To be, or not", kwargs), ("the slings and arrows", {"until": [], "max_gen_toks": 5}),
            ("whether 'tis nobler in the mind", {"until": ["\n\n"], "max_gen_toks": 6})]  # batched with the first
    want = hf.generate_until(_requests("generate_until", args))
    got = ours.generate_until(_requests("generate_until", args))
    assert got == want
    assert "e" not in got[0]


def test_the_evaluator_reports_paired_items_like_lm_evals_backend(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from compressor_evaluators.lm_harness.evaluator import LmEvalEvaluator, LmEvalOptions, task_scores
    from compressor_evaluators.lm_harness.tasks import SHIPPED, load_task_file

    options = LmEvalOptions(tasks=["shakespeare_mc"], limit=24, max_length=128)
    ctx = EvaluationContext(tokenizer=AutoTokenizer.from_pretrained(tiny_model_dir), max_len=256, log=lambda _: None)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    got = LmEvalEvaluator().evaluate(TorchRuntime(model), options, ctx)["shakespeare_mc"]
    want = task_scores(lm_eval.simple_evaluate(
        model=HFLM(pretrained=str(tiny_model_dir), device="cpu", batch_size=8, max_length=128),
        tasks=[load_task_file(SHIPPED["shakespeare_mc"])], limit=24, log_samples=True, bootstrap_iters=100,
        task_manager=lm_eval.tasks.TaskManager(include_defaults=False)))["shakespeare_mc"]
    assert set(got) == {"acc", "acc_norm"}
    for metric in got:
        assert got[metric].value == pytest.approx(want[metric].value) and len(got[metric].samples) == 24
        assert got[metric].samples == want[metric].samples and got[metric].stderr == pytest.approx(want[metric].stderr)


def test_a_local_task_file_reads_its_data_beside_it_from_any_working_directory(tiny_model_dir, tmp_path,
                                                                                 monkeypatch):
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from compressor_evaluators.lm_harness.evaluator import LmEvalEvaluator, LmEvalOptions
    from compressor_evaluators.lm_harness.tasks import SHIPPED

    tasks = tmp_path / "my_tasks"
    tasks.mkdir()
    items = [{"context": f"Line {i} of a play,\n", "choices": ["then this.", "or that.", "and so on."], "label": i % 3}
             for i in range(5)]
    (tasks / "items.jsonl").write_text("".join(json.dumps(x) + "\n" for x in items))
    yaml_text = SHIPPED["shakespeare_mc"].read_text().replace("task: shakespeare_mc", "task: my_local_mc")
    (tasks / "my_local_mc.yaml").write_text(yaml_text.replace("test: shakespeare_mc.jsonl", "test: items.jsonl"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # lm-eval alone would look for items.jsonl here
    options = LmEvalOptions(tasks="my_local_mc", task_files=[str(tasks / "my_local_mc.yaml")], max_length=64)
    ctx = EvaluationContext(tokenizer=AutoTokenizer.from_pretrained(tiny_model_dir), max_len=128, log=lambda _: None)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    found = LmEvalEvaluator().evaluate(TorchRuntime(model), options, ctx)
    assert set(found) == {"my_local_mc"} and len(found["my_local_mc"]["acc"].samples) == 5
