"""HiDe-LLaVA: each task's LoRA trained alone; at inference every layer but the LLM's last holds the fused LoRA
s (sum B)(sum A), and the last layer each task's LoRA weighted by the sample's task matching. Both against an
independent computation: numpy for the matching, the weights merged by hand into a fresh model for the layers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import MICRO_STAGES
from dmole.stages.data.tasks import load_eval_samples
from dmole.stages.dmole.bank import load_embeddings, require_embeddings
from dmole.stages.embed import embed
from dmole.stages.evaluate import evaluate
from dmole.stages.init import create_workspace
from dmole.stages.methods import get_method
from dmole.stages.methods.lora import expert_folder
from dmole.stages.models.registry import load_family
from dmole.stages.project import Project
from dmole.stages.train_task import train_task
from dmole.stages.training.chat import chat_examples

TASKS = ["color-vqa", "shape-choice"]


@pytest.fixture
def trained(micro_bench, tmp_path):
    root = tmp_path / "ws"
    create_workspace(
        root, model=micro_bench / "base-model", data=micro_bench / "data", tasks=TASKS, stages=MICRO_STAGES
    )
    project = Project.open(root)
    for task in TASKS:
        embed(project, task)
        train_task(project, task, {"method": "hide", "hparams": {"temperature": 0.05}})
    return project


def matching(project, task: str, sample_ids: list[str]) -> np.ndarray:
    """Independently: per sample, softmax over tasks of the mean of its two cosines with the tasks' mean training
    features, at temperature 0.05."""
    rows = []
    ids, matrix, metadata = load_embeddings(require_embeddings(project, task), "test")
    d = int(metadata["d_vision"])
    for sample_id in sample_ids:
        x = matrix[list(ids).index(sample_id)]
        sims = []
        for name in TASKS:
            train = load_embeddings(require_embeddings(project, name), "train")[1]
            cos = [
                float(np.dot(x[s], train[:, s].mean(0)) / np.linalg.norm(x[s]) / np.linalg.norm(train[:, s].mean(0)))
                for s in (slice(0, d), slice(d, None))
            ]
            sims.append(sum(cos) / 2)
        e = np.exp((np.array(sims) - max(sims)) / 0.05)
        rows.append(e / e.sum())
    return np.array(rows)


def test_task_matching_weights_each_sample_by_its_similarity_to_the_task_anchors(trained):
    plan = get_method("hide").evaluation(trained, TASKS[1], trained.load_model())
    for task in TASKS:
        samples = load_eval_samples(trained.data_root, trained.config.task(task))
        routes, errors = plan.routes_for(task, samples, None)
        ours = np.array([[route[k] for k in (1, 2)] for route in routes])
        assert errors is None and np.allclose(ours, matching(trained, task, [s.id for s in samples]), atol=1e-5)
    result = evaluate(trained, TASKS[1], {"method": "hide"})
    assert result.version.manifest["summary"][TASKS[0]] is not None


def test_the_llms_last_layer_weights_each_tasks_lora_and_the_others_hold_them_fused(trained):
    from dmole.stages.data.tasks import load_train_samples

    method = get_method("hide")
    adapter = trained.load_model()
    last_layer = max(c.layer for c in adapter.candidates(include_mlp=True) if c.tower == "language")
    last = {c.name for c in adapter.candidates(include_mlp=True) if c.tower == "language" and c.layer == last_layer}
    plan = method.evaluation(trained, TASKS[1], adapter)
    samples = load_train_samples(trained.data_root, trained.config.task(TASKS[0]))[:2]
    weights = [{1: 0.7, 2: 0.3}, {1: 0.1, 2: 0.9}]
    saved = [load_file(expert_folder(method.trained(trained, t)) / "adapter_model.safetensors") for t in TASKS]
    scale = 8 / 4  # alpha / rank of the baselines' LoRA
    for sample, w in zip(samples, weights):
        batch = adapter.train_batch(chat_examples([sample]))
        with torch.no_grad(), plan.around([w])([0], batch):
            ours = plan.model(**batch).logits
        fresh = load_family(trained.model_path).model.eval()
        modules = dict(fresh.named_modules())
        with torch.no_grad():
            for key in saved[0]:
                if not key.endswith(".lora_A.weight"):
                    continue
                name = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
                a = [s[key].double() for s in saved]
                b = [s[key.replace(".lora_A.", ".lora_B.")].double() for s in saved]
                if name in last:
                    delta = sum(w[k + 1] * b[k] @ a[k] for k in range(2))
                else:
                    delta = (b[0] + b[1]) @ (a[0] + a[1])
                modules[name].weight += (scale * delta).float()
            theirs = fresh(**batch).logits
        assert torch.allclose(ours, theirs, atol=1e-4)
