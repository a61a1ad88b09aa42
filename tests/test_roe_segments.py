"""Router-input segments (roe.md §3.1) and the alignment rule (§3.4, T4): a one-turn prompt at inference
gives the router the inputs that training computes for turn 1 of the same conversation."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from dmole.stages.models.base import IGNORE, ChatExample
from dmole.stages.models.registry import load_family
from dmole.stages.models.tiny import build_tiny
from dmole.stages.roe.attach import attach, roe_shape
from dmole.stages.roe.modules import RoEModules
from dmole.stages.roe.plan import RoutingPlan, TrainingRouting, routing
from dmole.stages.roe.schedule import ScheduleState
from dmole.stages.roe.segments import ImageTokens, prompt_segments, training_segments
from tiny_sizes import small_lm

IMG, END, PAD = 99, 98, 0
IMAGES = ImageTokens(IMG, frozenset({END}))
SIZE = small_lm(3)


def test_training_segments_two_turns_with_an_image_block():
    #        sys img img end  q   q  a  a  q  q  a  trailing pad
    ids = [[5, IMG, IMG, END, 7, 8, 9, 9, 7, 7, 9, 3, PAD]]
    lab = [[IGNORE] * 6 + [9, 9, IGNORE, IGNORE, 9, IGNORE, IGNORE]]
    mask = [[1] * 12 + [0]]
    seg = training_segments(torch.tensor(ids), torch.tensor(lab), torch.tensor(mask), IMAGES)
    assert seg.turn.tolist() == [[0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, -1]]
    assert seg.is_question.tolist() == [[False] * 4 + [True, True, False, False, True, True] + [False] * 3]
    assert seg.valid_turns().tolist() == [[True, True]]
    assert seg.counts() == ([4], [4])
    pooling = seg.pooling()
    assert pooling.shape == (1, 3, 13)
    assert torch.allclose(pooling.sum(-1), torch.ones(1, 3))
    assert pooling[0, 1].nonzero().flatten().tolist() == [4, 5]


def test_answer_right_after_the_prefix_is_an_invalid_turn_and_no_image_means_an_empty_prefix():
    ids = torch.tensor([[5, IMG, 9, 9, 7, 9], [5, 6, 7, 9, 9, 9]])
    lab = torch.tensor([[IGNORE, IGNORE, 9, 9, IGNORE, 9], [IGNORE, IGNORE, IGNORE, 9, 9, 9]])
    seg = training_segments(ids, lab, torch.ones_like(ids), IMAGES)
    assert seg.turn.tolist() == [[0, 0, 1, 1, 2, 2], [1, 1, 1, 1, 1, 1]]
    assert seg.valid_turns().tolist() == [[False, True], [True, False]]
    assert seg.pooling()[1, 0].sum() == 0  # empty prefix pools to zero


def test_prompt_segments_question_runs_to_the_end_of_the_prompt():
    ids = torch.tensor([[PAD, PAD, 5, IMG, END, 7, 8], [PAD, 5, IMG, IMG, 7, 8, 8]])
    seg = prompt_segments(ids, (ids != PAD).long(), IMAGES)
    assert seg.turn.tolist() == [[-1, -1, 0, 0, 0, 1, 1], [-1, 0, 0, 0, 1, 1, 1]]
    assert seg.is_question.tolist() == (seg.turn == 1).tolist()


@pytest.mark.parametrize(
    "family,router_input",
    [("llava", "pooled"), ("internvl", "pooled"), ("qwen2vl", "pooled"), ("llava", "tokens"), ("qwen2vl", "tokens")],
)
def test_inference_router_inputs_equal_training_turn_one(family, router_input, tmp_path):
    adapter = load_family(build_tiny(family, tmp_path / family, size=SIZE))
    torch.manual_seed(0)
    attachment = attach(adapter, RoEModules(roe_shape(adapter, [0], router_input=router_input)))
    routable = attachment.modules.shape.routable
    captured: list = []
    hooks = [
        attachment.modules.layers[str(l)].router.register_forward_hook(
            lambda _m, inputs, _o: captured.append(inputs[0][:, 0])
        )
        for l in routable
    ]
    image, question = Image.new("RGB", (16, 16), "teal"), "which shape is drawn here?"
    batch = adapter.train_batch([ChatExample(image, [(f"<image>\n{question}", "a circle")])])
    labels = batch.pop("labels")
    segments = training_segments(batch["input_ids"], labels, batch["attention_mask"], ImageTokens.of(adapter))
    # Stage 1 with a huge execute bias: every layer executes, as under a forced-execute plan.
    with routing(TrainingRouting(segments, ScheduleState(stage=1, tau=1.0, beta=1e9))), torch.no_grad():
        adapter.model(**batch)
    trained, captured[:] = list(captured), []
    inputs = adapter.generation_batch([image], [question])
    with routing(RoutingPlan.force_all(False, routable, 1)):
        adapter.model.generate(**inputs, max_new_tokens=1, do_sample=False, pad_token_id=adapter.tokenizer.pad_token_id)
    for hook in hooks:
        hook.remove()
    assert len(trained) == len(captured) == len(routable)
    for train_input, infer_input in zip(trained, captured):
        torch.testing.assert_close(train_input, infer_input, rtol=1e-4, atol=1e-5)
