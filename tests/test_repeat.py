"""`dmole repeat`: a method's sequence under several seeds and task orders, every metric as mean ± std over runs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dmole.stages.errors import UserError
from dmole.stages.options import RepeatOptions
from dmole.stages.registry import REPEAT, REPORT
from dmole.stages.repeat import planned_runs, task_order

TASKS = ["color-vqa", "shape-choice", "count-short"]


def test_an_order_is_default_reverse_or_every_task_once():
    assert task_order("default", TASKS) == tuple(TASKS)
    assert task_order("reverse", TASKS) == tuple(reversed(TASKS))
    assert task_order(" count-short, color-vqa,shape-choice", TASKS) == ("count-short", "color-vqa", "shape-choice")
    with pytest.raises(UserError, match="unknown colour-vqa; missing color-vqa"):
        task_order("colour-vqa,shape-choice,count-short", TASKS)
    with pytest.raises(UserError, match="missing count-short; repeated color-vqa"):
        task_order("color-vqa,shape-choice,color-vqa", TASKS)


def test_runs_are_every_seed_under_every_order_each_sequence_once():
    options = RepeatOptions(seeds=[1, 2, 1], orders=["default", "reverse", ",".join(TASKS)])
    runs = planned_runs(options, TASKS)
    assert [(r.seed, r.order) for r in runs] == [(1, "default"), (1, "reverse"), (2, "default"), (2, "reverse")]
    assert runs[1].tasks == tuple(reversed(TASKS))
    with pytest.raises(ValueError, match="every seed must lie in"):
        RepeatOptions(seeds=[2**32])


def _numpy_metrics(matrix: list[list[float]]) -> dict[str, float]:
    """The metrics straight from their definitions (docs/metrics.md), on a complete matrix."""
    R = np.array(matrix, dtype=float)
    T = R.shape[1]
    diagonal = np.array([R[i, i - 1] for i in range(1, T + 1)])
    seen = np.array([R[t, :t].mean() for t in range(1, T + 1)])
    bwt = np.array([R[T, i - 1] - R[i, i - 1] for i in range(1, T)])
    best = np.array([R[i:, i - 1].max() for i in range(1, T)])
    best_before_last = np.array([R[i:T, i - 1].max() for i in range(1, T)])
    return {
        "last": R[T].mean(),
        "avg_seen": seen.mean(),
        "avg_all": R[1:].mean(axis=0).mean(),
        "bwt": bwt.mean(),
        "fwt": np.mean([R[i - 1, i - 1] - R[0, i - 1] for i in range(2, T + 1)]),
        "mcitlib.mft": diagonal.mean(),
        "mcitlib.mfn": R[T].mean(),
        "mcitlib.maa": seen.mean(),
        "mcitlib.bwt": bwt.mean(),
        "coinpp.average_forgetting": (best - R[T, : T - 1]).mean(),
        "continual_next.avg_acc": R[T].mean(),
        "continual_next.forgetting": (R[T, : T - 1] - best_before_last).mean(),
        "continual_next.new_acc": diagonal.mean(),
    }


def _check_against_numpy(repeated: dict) -> None:
    """The artifact's per-run metrics and their mean ± std (ddof=1) equal numpy's from the runs' matrices; final
    scores are matched by task name whatever each run's order."""
    runs = repeated["runs"]
    per_run = [_numpy_metrics(run["matrix"]) for run in runs]
    assert set(repeated["metrics"]) == set(per_run[0])
    for key in per_run[0]:
        values = np.array([m[key] for m in per_run])
        for run, value in zip(runs, values):
            assert run["metrics"][key] == pytest.approx(value, abs=1e-9)
        assert repeated["metrics"][key]["mean"] == pytest.approx(values.mean(), abs=1e-9)
        assert repeated["metrics"][key]["std"] == pytest.approx(values.std(ddof=1), abs=1e-9)
    for task in repeated["tasks"]:
        finals = np.array([run["matrix"][-1][run["tasks"].index(task)] for run in runs])
        assert repeated["final"][task]["mean"] == pytest.approx(finals.mean(), abs=1e-9)
        assert repeated["final"][task]["std"] == pytest.approx(finals.std(ddof=1), abs=1e-9)


def _fake_run(calls: list):
    """A stand-in for one run: a random matrix drawn from the seed and the order, recorded in ``calls``."""

    def run(_project, _folder, _method, _hyper, run, _progress):
        calls.append((run.seed, run.tasks))
        rng = np.random.default_rng([run.seed, len(calls)])
        matrix = rng.uniform(0, 100, size=(len(run.tasks) + 1, len(run.tasks))).round(3).tolist()
        return {"seed": run.seed, "order": run.order, "tasks": list(run.tasks), "matrix": matrix, "trained": []}

    return run


def test_the_mean_and_std_of_every_metric_are_numpy_s_and_a_rerun_only_runs_what_is_new(make_project, monkeypatch):
    import dmole.stages.repeat as module

    calls = []
    monkeypatch.setattr(module, "_run", _fake_run(calls))
    project = make_project()
    names = project.config.task_names
    result = module.repeat(project, {"method": "seq-lora", "seeds": [1, 2], "orders": ["default", "reverse"]})
    assert [(seed, list(tasks)) for seed, tasks in calls] == [
        (1, names),
        (1, names[::-1]),
        (2, names),
        (2, names[::-1]),
    ]
    repeated = json.loads(result.version.file(REPEAT.files.result).read_text())
    assert [(r["seed"], r["order"]) for r in repeated["runs"]] == [
        (1, "default"),
        (1, "reverse"),
        (2, "default"),
        (2, "reverse"),
    ]
    _check_against_numpy(repeated)
    assert result.version.manifest["summary"]["runs"] == 4
    # the same command: up to date; another seed: only its runs are computed, the finished ones are read back
    assert module.repeat(project, {"method": "seq-lora", "seeds": [1, 2], "orders": ["default", "reverse"]}).up_to_date
    more = module.repeat(project, {"method": "seq-lora", "seeds": [2, 3], "orders": ["reverse", "default"]})
    assert [seed for seed, _ in calls[4:]] == [3, 3]
    grown = json.loads(more.version.file(REPEAT.files.result).read_text())
    by_run = {(r["seed"], tuple(r["tasks"])): r["matrix"] for r in repeated["runs"]}
    assert all(by_run[(r["seed"], tuple(r["tasks"]))] == r["matrix"] for r in grown["runs"] if r["seed"] == 2)
    _check_against_numpy(grown)
    # --force runs every run again
    module.repeat(project, {"method": "seq-lora", "seeds": [2, 3], "orders": ["reverse", "default"]}, force=True)
    assert len(calls) == 10


def test_a_single_run_has_no_spread_and_a_method_that_trains_nothing_is_refused(make_project, monkeypatch):
    import dmole.stages.repeat as module

    monkeypatch.setattr(module, "_run", _fake_run([]))
    project = make_project()
    repeated = json.loads(module.repeat(project, {"method": "seq-lora"}).version.file(REPEAT.files.result).read_text())
    assert repeated["metrics"]["last"]["std"] is None and repeated["metrics"]["last"]["runs"] == 1
    with pytest.raises(UserError, match="trains nothing"):
        module.repeat(project, {"method": "zero-shot"})
    with pytest.raises(UserError, match="--order 'reverse,color-vqa'"):
        module.repeat(project, {"method": "seq-lora", "orders": ["reverse,color-vqa"]})


def test_the_report_has_a_seeds_and_orders_section_only_where_a_repeat_was_run(make_project, monkeypatch):
    import dmole.stages.repeat as module
    from dmole.stages.evaluate import ZERO_SHOT, evaluate
    from dmole.stages.figures import repeats
    from dmole.stages.report import report

    project = make_project()
    evaluate(project, ZERO_SHOT)  # all the report needs besides the repeat
    before = report(project).version
    text = before.file(REPORT.files.markdown).read_text()
    assert "Seeds and orders" not in text and repeats.RESULT_KEY not in before.file(REPORT.files.metrics).read_text()
    assert repeats.gather(project) is None

    monkeypatch.setattr(module, "_run", _fake_run([]))
    module.repeat(project, {"method": "seq-lora", "seeds": [1, 2], "orders": ["default", "reverse"]})
    after = report(project).version
    text = after.file(REPORT.files.markdown).read_text()
    assert "## Seeds and orders" in text and "ddof = 1" in text and repeats.NAME in text
    carried = json.loads(after.file(REPORT.files.metrics).read_text())[repeats.RESULT_KEY]["repeats"][0]
    _check_against_numpy(carried)
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| metric"))
    last = [c.strip() for c in lines[header + 2].strip("|").split("|")]
    assert last[0] == "Last"
    assert last[1] == f"{carried['metrics']['last']['mean']:.2f} ± {carried['metrics']['last']['std']:.2f}"
    assert [float(v) for v in last[2:]] == pytest.approx([r["metrics"]["last"] for r in carried["runs"]], abs=0.005)
    assert after.file(repeats.NAME).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_run_s_workspace_has_its_order_and_seed_and_shares_what_no_training_made(make_project):
    from dmole.artifacts.layout import LATEST, LOCK
    from dmole.stages.methods import get_method
    from dmole.stages.registry import EMBED
    from dmole.stages.sequence import point_project

    project = make_project()
    names = project.config.task_names
    with project.store.writer(EMBED.name, names[0], config={}, inputs=[], environment={}, toolkit_version="0") as w:
        w.path("train.parquet").write_bytes(b"embeddings")
    shared = project.store.latest(EMBED.name, names[0])
    method = get_method("seq-lora")
    tasks = [project.config.task(n) for n in reversed(names)]
    point = point_project(project, project.root / ".runs" / "point", method, {"rank": 2}, tasks=tasks, seed=9)
    assert point.config.task_names == names[::-1] and point.config.seed == 9
    assert point.config.methods["seq-lora"] == {"rank": 2}
    for stage in ("fit-router", "zc-score", "train-task"):  # every stage with a seed draws from the run's
        assert point.config.stages[stage]["seed"] == 9
    assert point.config.stages["train-task"]["lr"] == project.config.stages["train-task"]["lr"]  # the rest kept
    # the embeddings are the main workspace's files (linked, not copied), and its pointer and lock stay its own
    found = point.store.latest(EMBED.name, names[0])
    assert found.content_hash == shared.content_hash
    assert found.file("train.parquet").stat().st_ino == shared.file("train.parquet").stat().st_ino
    assert not (point.root / EMBED.name / names[0] / LOCK).exists()
    with point.store.writer(EMBED.name, names[0], config={"x": 1}, inputs=[], environment={}, toolkit_version="0") as w:
        w.path("train.parquet").write_bytes(b"other")
    assert (project.root / EMBED.name / names[0] / LATEST).read_text().strip() == str(shared.number)
    assert project.store.latest(EMBED.name, names[0]).file("train.parquet").read_bytes() == b"embeddings"


def test_each_order_trains_its_own_sequence_and_an_interrupted_repeat_continues(micro_bench, tmp_path, monkeypatch):
    """Two real runs of seq-lora over two tasks, the second interrupted after its sequence and resumed (about 10 s,
    as the sweep's end-to-end test: the one check that a run's order is the order it trains in)."""
    import dmole.stages.repeat as module
    from conftest import MICRO_STAGES
    from dmole.stages.init import create_workspace
    from dmole.stages.project import Project

    root = tmp_path / "ws"
    create_workspace(
        root,
        model=micro_bench / "base-model",
        data=micro_bench / "data",
        tasks=["color-vqa", "shape-choice"],
        stages=MICRO_STAGES,
    )
    project = Project.open(root)
    first, second = project.config.task_names
    real, seen, trained = module.run_sequence, [], []
    stage = "seq-lora.train-task"

    def interrupted(point, method, hyper, progress):
        matrix = real(point, method, hyper, progress)
        seen.append(point)
        trained.append({task: [v.number for v in point.store.versions(stage, task)] for task in (first, second)})
        if len(seen) == 2:
            raise KeyboardInterrupt  # killed after the reversed run trained, before it was recorded
        return matrix

    monkeypatch.setattr(module, "run_sequence", interrupted)
    options = {"method": "seq-lora", "seeds": [7], "orders": ["default", "reverse"]}
    with pytest.raises(KeyboardInterrupt):
        module.repeat(project, options)
    assert project.store.latest(REPEAT.name, "seq-lora") is None
    default, reverse = seen
    assert not default.root.exists() and (default.root.parent / module.RUN_FILE).is_file()
    # the reversed run's own store: the second task trained first, on nothing; the first built on it
    on_first = reverse.store.require(stage, second).manifest
    assert reverse.config.task_names == [second, first]
    assert [i["task"] for i in on_first["inputs"] if i["stage"] == stage] == []
    assert [i["task"] for i in reverse.store.require(stage, first).manifest["inputs"] if i["stage"] == stage] == [
        second
    ]
    assert on_first["config"]["options"]["seed"] == 7 and reverse.config.seed == 7

    seen.clear()
    trained.clear()
    result = module.repeat(project, options)
    assert [p.config.task_names for p in seen] == [[second, first]]  # the finished run is not run again
    assert trained == [{first: [1], second: [1]}]  # the resumed one found its tasks trained: no new version
    repeated = json.loads(result.version.file(REPEAT.files.result).read_text())
    assert [r["trained"] for r in repeated["runs"]] == [
        [{"task": first, "seed": 7, "built_on": []}, {"task": second, "seed": 7, "built_on": [first]}],
        [{"task": second, "seed": 7, "built_on": []}, {"task": first, "seed": 7, "built_on": [second]}],
    ]
    zero = [dict(zip(r["tasks"], r["matrix"][0])) for r in repeated["runs"]]
    assert zero[0] == pytest.approx(zero[1])  # the same base model scores each task alike in either order
    _check_against_numpy(repeated)
    assert not [p for p in (project.root / ".runs" / REPEAT.name).rglob("*") if p.name == "workspace.json"]
