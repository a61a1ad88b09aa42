"""MR-LoRA: experts trained alone, a router LoRA trained on a few samples of every task learnt so far to name one
expert, and each test sample answered by the expert the router picks (checked against the router loaded with PEFT
alone, scored one option at a time)."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel

from conftest import MICRO_STAGES
from dmole.artifacts.io import read_parquet
from dmole.stages.data.images import load_image
from dmole.stages.data.prompts import render_prompt
from dmole.stages.data.tasks import load_eval_samples
from dmole.stages.evaluate import evaluate
from dmole.stages.init import create_workspace
from dmole.stages.methods import get_method
from dmole.stages.methods.mr_lora_router import ROUTER_FOLDER, router_question, router_set
from dmole.stages.models.base import ChatExample
from dmole.stages.models.registry import load_family
from dmole.stages.project import Project
from dmole.stages.train_task import train_run, train_task
from dmole.stages.training.chat import supervised_tokens

TASKS = ["color-vqa", "shape-choice"]
FAST_ROUTER = {"router_samples": 4, "router_epochs": 6, "router_lr": 1e-2, "router_rank": 8, "router_alpha": 16}


@pytest.fixture
def two_tasks(micro_bench, tmp_path):
    root = tmp_path / "ws"
    create_workspace(
        root, model=micro_bench / "base-model", data=micro_bench / "data", tasks=TASKS, stages=MICRO_STAGES
    )
    return Project.open(root)


def test_the_router_set_asks_each_sample_which_task_it_belongs_to(two_tasks):
    _, run, _ = train_run(two_tasks, TASKS[1], {"method": "mr-lora", "hparams": {"router_samples": 3}})
    samples = router_set(two_tasks, 2, run.hyper)
    assert [s.id.split("/")[0] for s in samples] == [TASKS[0]] * 3 + [TASKS[1]] * 3
    assert [s.turns[0][1] for s in samples] == ["A"] * 3 + ["B"] * 3
    question = samples[0].turns[0][0]
    assert "A. color-vqa" in question and "B. shape-choice" in question
    assert question.endswith("Answer with the option's letter from the given choices directly.")


def test_each_test_sample_goes_to_the_expert_whose_letter_the_router_finds_likeliest(two_tasks):
    options = {"method": "mr-lora", "hparams": FAST_ROUTER}
    for task in TASKS:
        result = train_task(two_tasks, task, options)
    summary = result.version.manifest["summary"]
    assert summary["router_samples"] == 8 and summary["trainable_parameters"] > 0
    method = get_method("mr-lora")
    plan = method.evaluation(two_tasks, TASKS[1], two_tasks.load_model())
    # independently: the router folder on a fresh model, each option's answer scored alone
    adapter = load_family(two_tasks.model_path)
    router = PeftModel.from_pretrained(adapter.model, method.trained(two_tasks, TASKS[1]).path / ROUTER_FOLDER).eval()
    chosen = {}
    for task in TASKS:
        spec = two_tasks.config.task(task)
        samples = load_eval_samples(two_tasks.data_root, spec)
        routes, errors = plan.routes_for(task, samples, None)
        assert errors is None and all(len(r) == 1 for r in routes)
        expected = []
        for s in samples:
            question = router_question(render_prompt(spec, s), TASKS)
            likelihood = []
            for letter in "AB":
                batch = adapter.train_inputs([ChatExample(load_image(s.image), [(question, letter)])])
                with torch.no_grad():
                    loss = router(**batch).loss
                likelihood.append(-float(loss) * supervised_tokens(batch["labels"]))
            expected.append((1 + max(range(2), key=likelihood.__getitem__),))
        assert routes == expected, task
        chosen[task] = routes
    assert set(chosen[TASKS[0]] + chosen[TASKS[1]]) == {(1,), (2,)}  # the trained router tells the tasks apart
    result = evaluate(two_tasks, TASKS[1], {"method": "mr-lora"})
    for task in TASKS:
        table = read_parquet(result.version.file(f"predictions/{task}.parquet")).to_pydict()
        assert [tuple(r) for r in table["routed_tasks"]] == chosen[task]
