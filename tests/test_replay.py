"""Replay and D-MoLE + replay: the buffer (its size, its seeded draw, its record) and its samples in training."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from conftest import MICRO_STAGES
from dmole.stages.data.tasks import load_train_samples
from dmole.stages.init import create_workspace
from dmole.stages.methods import get_method
from dmole.stages.methods.replay import buffer_size
from dmole.stages.project import Project
from dmole.stages.train_task import train_run, train_task

TASKS = ["color-vqa", "shape-choice", "opposite-short"]


@pytest.fixture
def three_tasks(micro_bench, tmp_path):
    root = tmp_path / "ws"
    create_workspace(
        root, model=micro_bench / "base-model", data=micro_bench / "data", tasks=TASKS, stages=MICRO_STAGES
    )
    return Project.open(root)


def training_lines(project: Project, task: str) -> list[str]:
    """The task's training sample ids read straight from its JSONL file."""
    spec = project.config.task(task)
    path = project.data_root / spec.train
    return [str(json.loads(line)["id"]) for line in path.read_text().splitlines() if line.strip()]


def test_buffer_size_is_a_fraction_or_a_count():
    assert buffer_size(0.25, 12) == 3 and buffer_size(0.01, 12) == 1  # a fraction, at least one sample
    assert buffer_size(5, 12) == 5 and buffer_size(20, 12) == 12  # a count, at most the task's samples


def test_the_buffer_is_a_seeded_draw_of_every_earlier_tasks_samples_mixed_in(three_tasks):
    _, run, names = train_run(three_tasks, TASKS[2], {"method": "replay", "hparams": {"replay": 5}})
    own = training_lines(three_tasks, TASKS[2])
    assert list(run.replayed) == TASKS[:2] and names == [TASKS[2], *TASKS[:2]]
    for task in TASKS[:2]:
        ids = [s.id for s in run.replayed[task]]
        lines = training_lines(three_tasks, task)
        assert len(ids) == len(set(ids)) == 5 and set(ids) <= set(lines)
        # the same draw as a seeded sample of the task's lines, in file order
        expected = sorted(random.Random(f"42-replay-{task}").sample(range(len(lines)), 5))
        assert ids == [lines[i] for i in expected]
    assert [s.id for s in run.samples] == own + [s.id for t in TASKS[:2] for s in run.replayed[t]]
    # task 1's buffer is the same at task 2 and task 3; another seed draws another one
    _, second, _ = train_run(three_tasks, TASKS[1], {"method": "replay", "hparams": {"replay": 5}})
    assert [s.id for s in second.replayed[TASKS[0]]] == [s.id for s in run.replayed[TASKS[0]]]
    _, other, _ = train_run(three_tasks, TASKS[1], {"method": "replay", "hparams": {"replay": 5, "replay_seed": 7}})
    assert [s.id for s in other.replayed[TASKS[0]]] != [s.id for s in second.replayed[TASKS[0]]]
    _, half, _ = train_run(three_tasks, TASKS[1], {"method": "replay", "hparams": {"replay": 0.5}})
    assert len(half.replayed[TASKS[0]]) == len(training_lines(three_tasks, TASKS[0])) // 2


def test_replay_trains_on_the_mixture_and_records_the_buffer(three_tasks):
    options = {"method": "replay", "hparams": {"replay": 4}}
    train_task(three_tasks, TASKS[0], options)
    result = train_task(three_tasks, TASKS[1], options)
    manifest = result.version.manifest
    _, run, _ = train_run(three_tasks, TASKS[1], options)
    assert manifest["summary"]["replay"] == {TASKS[0]: [s.id for s in run.replayed[TASKS[0]]]}
    own = len(load_train_samples(three_tasks.data_root, three_tasks.config.task(TASKS[1])))
    assert manifest["summary"]["steps"] == -(-(own + 4) // MICRO_STAGES["train-task"]["batch_size"])
    # it continues task 1's LoRA, and a changed buffer is a changed run
    assert any(i["stage"] == "replay.train-task" and i["task"] == TASKS[0] for i in manifest["inputs"])
    assert not train_task(three_tasks, TASKS[1], {**options, "hparams": {"replay": 3}}).up_to_date


def test_dmole_replay_routes_each_replayed_sample_by_its_own_embedding(three_tasks):
    from dmole.stages.allocate import allocate
    from dmole.stages.dmole.bank import load_bank, load_embeddings, require_embeddings
    from dmole.stages.dmole.routing import training_partner
    from dmole.stages.embed import embed
    from dmole.stages.fit_router import fit_router
    from dmole.stages.zc_score import zc_score

    for task in TASKS[:2]:
        embed(three_tasks, task)
        fit_router(three_tasks, task)
        zc_score(three_tasks, task)
        allocate(three_tasks, task, {"method": "dmole-replay"})
    options = {"method": "dmole-replay", "hparams": {"replay": 6}}
    train_task(three_tasks, TASKS[0], options)
    method, run, _ = train_run(three_tasks, TASKS[1], options)
    inputs = method.carried(run)
    method.route_partners(run)
    replayed = run.replayed[TASKS[0]]
    assert len(run.carried["partners"]) == len(run.samples) and run.samples[-6:] == replayed
    # independently: task 1's router on each replayed sample's row of task 1's training embeddings
    ids, matrix, metadata = load_embeddings(require_embeddings(three_tasks, TASKS[0]), "train")
    rows = matrix[[ids.index(s.id) for s in replayed]]
    bank = load_bank(three_tasks, TASKS[:1])
    errors = np.stack([np.asarray(bank.errors(row[None], metadata))[0] for row in rows])
    assert run.carried["partners"][-6:] == training_partner(errors, bank.thresholds)
    assert any(p == 1 for p in run.carried["partners"][-6:])  # task 1's router takes back its own samples
    assert {(i.stage, i.task) for i in inputs} >= {("embed", TASKS[0]), ("embed", TASKS[1])}
    result = train_task(three_tasks, TASKS[1], options)
    assert result.version.manifest["summary"]["replay"] == {TASKS[0]: [s.id for s in replayed]}
    assert get_method("dmole-replay").evaluation(three_tasks, TASKS[1], three_tasks.load_model()).routes_for
