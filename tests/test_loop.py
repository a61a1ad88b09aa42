"""The training loop's batching: gradient accumulation equals the large batch, length grouping, and the
truncation of training inputs that never cuts image tokens."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from dmole.stages.models.base import IGNORE, ChatExample
from dmole.stages.models.registry import load_family
from dmole.stages.models.tiny import TinySize, build_tiny
from dmole.stages.training.loop import LoopSettings, ParamGroup, TrainingFailed, batch_plan, micro_batches, train

SIZE = TinySize(lm_layers=2, vision_layers=2)
# Answers of very different lengths, so token weighting differs from sample weighting.
TURNS = [[("<image>\nName it.", "a" * n)] for n in (1, 9, 3, 27, 2, 14)]


def _image(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_tiny("llava", tmp_path_factory.mktemp("loop") / "llava", size=SIZE)


@pytest.fixture
def llava(folder):
    return load_family(folder)


def _one_step_gradients(folder, grad_accum: int) -> dict[str, torch.Tensor]:
    adapter = load_family(folder)  # fresh weights: the step updates them
    model = adapter.model
    params = [p for n, p in model.named_parameters() if ".layers.1." in n]
    for p in model.parameters():
        p.requires_grad_(False)
        p.grad = None
    for p in params:
        p.requires_grad_(True)

    def loss_fn(prepared, indices, _scope):
        batch = adapter.train_batch([ChatExample(_image(i), TURNS[i]) for i in indices])
        return {"loss": prepared(**batch).loss, "count": int((batch["labels"][:, 1:] != IGNORE).sum())}

    settings = LoopSettings(epochs=1, batch_size=len(TURNS), lr=1e-3, clip=0.0, grad_accum=grad_accum)
    model.train()
    log = train(model, [ParamGroup("layer1", params)], loss_fn, len(TURNS), settings).log
    return {"loss": torch.tensor(log[0]["loss"]), **{str(i): p.grad.clone() for i, p in enumerate(params)}}


def test_an_accumulated_step_equals_the_large_batch_step(folder):
    # The model's dropout is 0, so the micro-batches see exactly what the large batch sees.
    whole = _one_step_gradients(folder, grad_accum=1)
    for accum in (2, 3, 6):
        split = _one_step_gradients(folder, grad_accum=accum)
        for key, value in whole.items():
            torch.testing.assert_close(split[key], value, rtol=1e-4, atol=1e-6, msg=f"{key} with {accum}")
    assert float(whole["0"].abs().sum()) > 0


def test_micro_batches_cover_the_share_in_order():
    assert micro_batches(list(range(7)), 3) == [[0, 1], [2, 3, 4], [5, 6]]
    assert micro_batches([4, 5], 4) == [[4], [5]]
    assert micro_batches([1, 2, 3], 1) == [[1, 2, 3]]


def test_length_grouping_sorts_mega_batches_and_leads_with_the_longest():
    lengths = [int(x) for x in np.random.default_rng(0).integers(1, 1000, 333)]
    settings = LoopSettings(epochs=2, batch_size=3, lr=1.0, group_by_length=True)
    plan = batch_plan(len(lengths), settings, lengths)
    per_epoch = len(plan) // 2
    for epoch in (plan[:per_epoch], plan[per_epoch:]):
        assert sorted(i for batch in epoch for i in batch) == list(range(len(lengths)))
        assert max(lengths) in [lengths[i] for i in epoch[0]]
        # inside a mega-batch (50 batches), lengths never rise from one batch to the next
        rest = [i for batch in epoch[1:50] for i in batch]
        assert all(lengths[a] >= lengths[b] for a, b in itertools.pairwise(rest))
    assert plan == batch_plan(len(lengths), settings, lengths)  # deterministic, hence resumable
    plain = batch_plan(len(lengths), LoopSettings(epochs=2, batch_size=3, lr=1.0))
    assert plain != plan and sorted(map(len, plain)) == sorted(map(len, plan))
    with pytest.raises(ValueError, match="one length per sample"):
        batch_plan(4, settings)


def test_truncation_keeps_every_image_token(llava):
    long = [("<image>\nDescribe it at length.", "word " * 40)]
    full = llava.train_batch([ChatExample(_image(0), long), ChatExample(_image(1), TURNS[0])])
    image_id = llava.model.config.image_token_id
    last_image = int((full["input_ids"][0] == image_id).nonzero().max()) + 1
    answer = int((full["labels"][0] != IGNORE).nonzero().min())
    limit = answer + 5  # through the start of the long answer
    cut = llava.train_batch([ChatExample(_image(0), long), ChatExample(_image(1), TURNS[0])], max_length=limit)
    assert cut["input_ids"].shape[1] == limit < full["input_ids"].shape[1]
    assert torch.equal(cut["input_ids"][0], full["input_ids"][0, :limit])
    assert torch.equal(cut["labels"][0], full["labels"][0, :limit])
    kept = min(int(full["attention_mask"][1].sum()), limit)
    assert torch.equal(cut["input_ids"][1, :kept], full["input_ids"][1, :kept])
    assert int(cut["attention_mask"][1].sum()) == kept
    # A limit inside the image block keeps the whole block and cuts right after it.
    tight = llava.train_batch([ChatExample(_image(0), long)], max_length=3)
    assert tight["input_ids"].shape[1] == last_image and int((tight["input_ids"] == image_id).sum()) == int(
        (full["input_ids"][0] == image_id).sum()
    )
    assert (tight["labels"] == IGNORE).all()
    assert (cut["labels"] != IGNORE).any()
    with torch.no_grad():
        assert torch.isfinite(llava.model(**cut).loss)


def _linear_run(loss_of, *, steps: int = 4, lr: float = 1e-2, clip: float = 1.0):
    """``steps`` one-sample steps of a 2x2 linear layer; ``loss_of(step, prediction)`` gives the step's loss and
    its count of supervised units."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(2, 2)
    seen = []

    def loss_fn(prepared, indices, _scope):
        seen.append(indices)
        loss, count = loss_of(len(seen), prepared(torch.ones(1, 2)).sum())
        return {"loss": loss, "count": count}

    settings = LoopSettings(epochs=1, batch_size=1, lr=lr, clip=clip, warmup_ratio=0.0)
    return layer, train(layer, [ParamGroup("layer", list(layer.parameters()))], loss_fn, steps, settings)


def test_a_nan_loss_stops_training_at_its_step():
    with pytest.raises(TrainingFailed, match="diverged at step 3 of 4: the loss is nan"):
        _linear_run(lambda step, y: (y * float("nan") if step == 3 else y**2, 1))


def test_a_parameter_that_overflows_stops_training_at_its_step():
    # sqrt(0 * y) is a finite loss (0) whose gradient is nan (0 / 0): the step's update makes the parameters nan
    with pytest.raises(TrainingFailed, match="diverged at step 2 of 4: a trained parameter is inf or nan"):
        _linear_run(lambda step, y: (torch.sqrt(y * 0) if step == 2 else y**2, 1), clip=0.0)


def test_a_run_with_nothing_supervised_is_an_error():
    # every answer cut away: the mean over no token is nan, and the micro-batch is idle (weight 0)
    with pytest.raises(TrainingFailed, match="none of the 4 steps had a supervised token"):
        _linear_run(lambda step, y: (y * float("nan"), 0))


def test_steps_with_nothing_supervised_among_others_only_warn():
    layer, result = _linear_run(lambda step, y: (y * float("nan"), 0) if step % 2 else (y**2, 3))
    assert [row["supervised"] for row in result.log] == [0, 3, 0, 3]
    assert result.warnings == [
        "2 of 4 steps had no supervised token (their answers were cut away by max_length) and changed nothing"
    ]
    assert all(torch.isfinite(p).all() for p in layer.parameters())
