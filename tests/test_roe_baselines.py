"""RoE's baselines (static layer dropping, random routing) and the skip-ratio sweep: the static baseline skips its
chosen layers for every example, in training and at inference; the random router skips at its rate, per sample
whatever the batch; the static layers are those whose output changes their input least; and `route-sweep` writes
every run, relative to the dense scores, with the baselines at RoE's realised skip."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

from dmole.artifacts.io import read_parquet
from dmole.stages.models.registry import load_family
from dmole.stages.roe.fixed import FixedRouting, layer_change, least_change_layers
from dmole.stages.roe.sweep import mean_relative, relative, skip_patterns, summarise
from dmole.stages.route_sweep import route_sweep
from tiny_sizes import small_lm, tiny_roe_project

SIZE = small_lm(5)
ROUTE_TRAIN = dict(epochs=1, batch_size=4, roe_lr=1e-2, eval_batch_size=4, max_eval_samples=2, stage2_mode="frozen")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return tiny_roe_project(tmp_path_factory.mktemp("roe-sweep"), SIZE, ROUTE_TRAIN)


def test_static_routing_skips_its_layers_for_every_example():
    static = FixedRouting("static", layers=(2, 4))
    keys = [("task", i) for i in range(7)]
    forced = static.forced(keys, routable=[1, 2, 3, 4])
    assert {layer: decisions.tolist() for layer, decisions in forced.items()} == {
        1: [False] * 7,
        2: [True] * 7,
        3: [False] * 7,
        4: [True] * 7,
    }
    assert torch.equal(static.skips(keys, 2, step=5), static.skips(keys, 2, step=9))  # the same at every step


def test_random_routing_skips_at_its_rate_per_sample_whatever_the_batch():
    rate, n = 0.3, 4000
    random_routing = FixedRouting("random", rate=rate, seed=3)
    keys = [("task", i) for i in range(n)]
    draws = torch.stack([random_routing.skips(keys, layer) for layer in (1, 2)])
    # within 4 standard errors of the rate (binomial)
    assert abs(float(draws.float().mean()) - rate) < 4 * math.sqrt(rate * (1 - rate) / draws.numel())
    assert not torch.equal(draws[0], draws[1])  # layers draw independently
    assert torch.equal(random_routing.skips(keys[5:17], 1), draws[0, 5:17])  # a sample's draw ignores its batch
    assert not torch.equal(random_routing.skips(keys, 1, step=0), random_routing.skips(keys, 1, step=1))
    other = FixedRouting("random", rate=rate, seed=4).skips(keys, 1)
    assert not torch.equal(other, draws[0])


def test_least_change_layers_are_those_whose_output_is_closest_to_their_input(project):
    from dmole.stages.data.tasks import load_train_samples
    from dmole.stages.training.chat import chat_examples

    adapter = load_family(project.model_path, device="cpu")
    samples = load_train_samples(project.data_root, project.config.tasks[0])
    batch = adapter.train_batch(chat_examples(samples[:3]))
    change = layer_change(adapter, [batch])
    # independently: the decoder's hidden states before each layer (the last entry is after the final norm, so the
    # last layer is compared through the others only)
    with torch.no_grad():
        states = adapter.model(
            **{k: v for k, v in batch.items() if k != "labels"}, output_hidden_states=True
        ).hidden_states
    mask = batch["attention_mask"].bool()
    expected = [
        float(torch.nn.functional.cosine_similarity(states[l], states[l + 1], dim=-1)[mask].mean())
        for l in range(len(states) - 2)
    ]
    assert len(change) == len(states) - 1 and change[:-1] == pytest.approx(expected, abs=1e-5)
    routable = [1, 2, 3, 4]
    chosen = least_change_layers(change, routable, 2)
    assert list(chosen) == sorted(sorted(routable, key=lambda l: -change[l])[:2])
    assert all(change[l] >= change[m] for l in chosen for m in routable if m not in chosen)
    assert least_change_layers(change, routable, 0) == ()


def test_the_static_baseline_skips_its_layers_in_training_and_inference(project):
    from dmole.stages.data.tasks import load_train_samples
    from dmole.stages.options import RouteTrainOptions
    from dmole.stages.roe.attach import attach, roe_shape
    from dmole.stages.roe.evaluation import eval_sets, evaluate_routed
    from dmole.stages.roe.modules import RoEModules
    from dmole.stages.roe.plan import TrainingRouting, routing
    from dmole.stages.roe.recipe import parameter_groups
    from dmole.stages.roe.schedule import StageSchedule
    from dmole.stages.roe.segments import ImageTokens, training_segments
    from dmole.stages.training.chat import chat_examples

    adapter = load_family(project.model_path, device="cpu")
    attachment = attach(adapter, RoEModules(roe_shape(adapter, [0])))
    static = FixedRouting("static", layers=(1, 3))
    settings = RouteTrainOptions(**ROUTE_TRAIN)
    groups, _ = parameter_groups(adapter, attachment.modules, settings, static)
    assert [g.name for g in groups] == ["roe_adapter"]  # nothing reads the routers

    samples = load_train_samples(project.data_root, project.config.tasks[0])[:3]
    batch = adapter.train_batch(chat_examples(samples))
    labels = batch.pop("labels")
    segments = training_segments(batch["input_ids"], labels, batch["attention_mask"], ImageTokens.of(adapter))
    for stage_step in (0, 7):  # stage 0 (random draws for RoE) and stage 2 (the router for RoE)
        state = StageSchedule(10, 0.3, 0.3, 0.5).state(stage_step)
        with torch.no_grad(), routing(TrainingRouting(segments, state, keys=[0, 1, 2], fixed=static)) as ctx:
            adapter.model(**batch)
        assert {l: p.tolist() for l, p in ctx.p_skip.items()} == {
            l: [[1.0]] * 3 if l in (1, 3) else [[0.0]] * 3 for l in (1, 2, 3, 4)
        }

    _, rows = evaluate_routed(adapter, attachment, eval_sets(project, 2), 2, "gather", run_id="t", fixed=static)
    assert rows and all(r["applied_skip"] == (r["layer"] in (1, 3)) for r in rows)


def test_skip_patterns_count_the_distinct_sets_of_skipped_layers_per_task():
    def row(task, example, layer, skipped, routable=True):
        return {"benchmark": task, "example_id": example, "layer": layer, "routable": routable, "applied_skip": skipped}

    rows = [
        row("a", "1", 1, True),
        row("a", "1", 2, False),
        row("a", "2", 1, True),
        row("a", "2", 2, False),
        row("a", "3", 1, False),
        row("a", "3", 2, True),
        row("b", "1", 0, True, routable=False),
        row("b", "1", 1, False),
        row("b", "2", 1, False),
    ]
    assert skip_patterns(rows) == {"a": 2, "b": 1}


def test_relative_scores_and_the_summary_over_seeds():
    dense = {"a": 200.0, "b": 50.0, "c": 0.0}
    rel = relative({"a": 150.0, "b": 50.0, "c": 10.0}, dense)
    assert rel == {"a": 0.75, "b": 1.0, "c": None}  # no reference for a task the dense model scores 0 on
    assert mean_relative(rel) == pytest.approx(0.875)
    runs = [
        {
            "seed": seed,
            "target": 0.3,
            "variant": "roe",
            "skip_rate": skip,
            "relative": {"a": a, "b": 1.0},
            "mean_relative": (a + 1.0) / 2,
            "speed": {"speedup": speedup},
        }
        for seed, skip, a, speedup in ((0, 0.2, 0.5, 1.1), (1, 0.4, 0.9, 1.3))
    ]
    [row] = summarise(runs)
    assert row["skip_rate"] == pytest.approx(0.3) and row["speedup"] == pytest.approx(1.2)
    assert row["mean_relative"] == pytest.approx(0.85) and row["spread"] == pytest.approx(0.2)
    assert row["min_relative"] == pytest.approx(0.75) and row["relative"]["a"] == pytest.approx(0.7)
    [alone] = summarise(runs[:1])
    assert alone["spread"] is None and alone["mean_relative"] == pytest.approx(0.75)  # one seed: no spread, not 0


def test_route_sweep_writes_every_run_with_baselines_at_the_realised_skip(project):
    options = {
        "skip_ratios": [0.3],
        "seeds": [0, 1],
        "speed_prompts": 1,
        "speed_repeats": 1,
        "speed_new_tokens": 2,
        "change_samples": 8,
    }
    version = route_sweep(project, options).version
    sweep = json.loads(version.file("sweep.json").read_text())
    routable = sweep["routable"]
    assert sweep["dense_reference"] == "base" and routable == [1, 2, 3, 4]
    runs = sweep["runs"]
    assert sorted((r["seed"], r["variant"]) for r in runs) == sorted(
        (s, v) for s in (0, 1) for v in ("roe", "static", "random")
    )
    for run in runs:
        assert run["relative"] == relative(run["scores"], sweep["dense"][str(run["seed"])])
        assert run["speed"]["speedup"] == pytest.approx(run["speed"]["dense_seconds"] / run["speed"]["routed_seconds"])
    assert sweep["layer_change"]["0"] == sweep["layer_change"]["1"]  # both seeds' runs start from the base
    for seed in (0, 1):
        by = {r["variant"]: r for r in runs if r["seed"] == seed}
        roe_skip = by["roe"]["skip_rate"]
        assert by["random"]["routing"]["rate"] == pytest.approx(roe_skip)
        k = round(roe_skip * len(routable))
        assert by["static"]["routing"]["layers"] == list(
            least_change_layers(sweep["layer_change"][str(seed)], routable, k)
        )
        assert by["static"]["skip_rate"] == pytest.approx(k / len(routable))
        assert set(by["static"]["skip_patterns"].values()) == {1}  # one set of layers for every example
    assert [(row["target"], row["variant"]) for row in sweep["summary"]] == [
        (0.3, v) for v in ("roe", "static", "random")
    ]
    table = read_parquet(version.file("sweep.parquet")).to_pydict()
    assert len(table["task"]) == len(runs) * len(project.config.task_names)
    assert table["score"] == [r["scores"][t] for r in runs for t in r["scores"]]
    assert version.file("roe_sweep.png").stat().st_size > 0
    assert "RoE skip-ratio sweep" in version.file("sweep.md").read_text()
    assert route_sweep(project, options).up_to_date
    # a sweep over fewer seeds is a new version, built from the runs already trained (timings included)
    subset = json.loads(route_sweep(project, options | {"seeds": [1]}).version.file("sweep.json").read_text())
    assert subset["runs"] == [r for r in runs if r["seed"] == 1]


def test_the_sweep_figure_says_why_it_is_empty_when_the_dense_reference_scored_zero(tmp_path):
    """Every mean relative score n/a (a dense model that scored 0): the figure is drawn with a note, not an empty
    legend (matplotlib's 'No artists with labels' warning, made an error here)."""
    from dmole.stages.figures import roe_sweep

    row = {"variant": "roe", "skip_rate": 0.25, "speedup": 1.1, "min_relative": None, "max_relative": None}
    data = {"source": "x", "dense_reference": "base", "tasks": ["a"], "seeds": [0], "rows": []}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        roe_sweep.plot(data | {"rows": [row | {"mean_relative": None}]}, tmp_path / "empty.png")
        scored = row | {"mean_relative": 0.9, "min_relative": 0.85, "max_relative": 0.95}
        roe_sweep.plot(data | {"rows": [scored]}, tmp_path / "scored.png")
    assert (tmp_path / "empty.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "scored.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
