"""Routing tokens (roe.md §3.3), the reference's router input: slots carried beside the sequence must compute
what slots placed inside it compute (the reference's layout), never change a real token, decide at inference from
the last slot, and train only from stage 1 on."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from dmole.stages.models.base import ChatExample
from dmole.stages.models.registry import load_family
from dmole.stages.models.tiny import build_tiny
from dmole.stages.roe.attach import attach, roe_shape
from dmole.stages.roe.inference import generate_with_roe
from dmole.stages.roe.modules import RoEModules
from dmole.stages.roe.plan import RoutingPlan, TrainingRouting, routing
from dmole.stages.roe.schedule import ScheduleState, random_skip_bias
from dmole.stages.roe.segments import ImageTokens, training_segments
from dmole.stages.roe.weights import load_roe, save_roe
from tiny_sizes import small_lm

SIZE = small_lm()
PROMPTS = ["what colour is it?", "a much longer question about the shape in the picture", "hi"]


@pytest.fixture(scope="module", params=["llava", "qwen2vl"])
def tokens(request, tmp_path_factory):
    adapter = load_family(build_tiny(request.param, tmp_path_factory.mktemp(request.param), size=SIZE))
    for p in adapter.model.parameters():
        p.requires_grad_(False)
    torch.manual_seed(0)
    attachment = attach(adapter, RoEModules(roe_shape(adapter, [0], router_input="tokens")))
    images = [Image.new("RGB", (16, 16), c) for c in ("red", "navy", "white")]
    return adapter, attachment, images


def _capture_lm_inputs(adapter):
    """The language model's inputs at the prefill (merged image features included)."""
    seen: dict = {}

    def hook(_module, _args, kwargs):
        seen.setdefault("kwargs", kwargs)

    return seen, adapter.lm_body.register_forward_pre_hook(hook, with_kwargs=True)


def _slots_inside_the_sequence(adapter, attachment, lm_inputs: dict, plan: RoutingPlan) -> list[torch.Tensor]:
    """The reference's layout, built independently: [prefix slot, turn slot] prepended to the real embeddings,
    one 4D mask (slot 0 sees itself and the prefix, slot 1 itself and the question, no token sees a slot),
    position 0 for the slots. Returns every layer's input hidden states of the two slots."""
    embeds = lm_inputs["inputs_embeds"]
    batch, length, _ = embeds.shape
    tokens = attachment.modules.tokens
    slots = torch.stack([tokens.prefix, tokens.turn])[None].expand(batch, -1, -1).to(embeds.dtype)
    visible = plan.segments.pooling() > 0  # [B, 2, T]
    padding = lm_inputs["attention_mask"].bool()
    real = torch.ones(length, length, dtype=torch.bool).tril()[None] & padding[:, None, :]
    mask = torch.zeros(batch, 1, 2 + length, 2 + length, dtype=torch.bool)
    mask[:, 0, :2, :2] = torch.eye(2, dtype=torch.bool)
    mask[:, 0, :2, 2:] = visible
    mask[:, 0, 2:, 2:] = real
    positions = lm_inputs["position_ids"]
    positions = torch.cat([positions.new_zeros(*positions.shape[:-1], 2), positions], dim=-1)
    with torch.no_grad():
        out = adapter.lm_body(
            inputs_embeds=torch.cat([slots, embeds], 1),
            attention_mask=mask,
            position_ids=positions,
            use_cache=False,
            output_hidden_states=True,
        )
    return [h[:, :2] for h in out.hidden_states]


def test_slots_beside_the_sequence_equal_slots_inside_it_and_decide_from_the_last(tokens):
    adapter, attachment, images = tokens
    routable = attachment.modules.shape.routable
    lm_inputs, hook = _capture_lm_inputs(adapter)
    plan = generate_with_roe(
        adapter, images, PROMPTS, max_new_tokens=2, forced={l: torch.zeros(3, dtype=torch.bool) for l in routable}
    ).plan
    hook.remove()
    reference = _slots_inside_the_sequence(adapter, attachment, lm_inputs["kwargs"], plan)
    layers = adapter.language_layers()
    for l in routable:
        routed = attachment.modules.layers[str(l)]
        normed = getattr(layers[l], adapter.lm_input_norm)(reference[l]).float()
        expected = routed.router(torch.cat([normed[:, 0], normed[:, -1]], dim=-1))
        torch.testing.assert_close(plan.logits[l], expected, rtol=1e-4, atol=1e-5)
    assert plan.stream.next_layer == len(layers)  # the slots crossed every layer once, at the prefill


def test_slots_never_change_a_real_token(tokens):
    adapter, attachment, images = tokens
    routable = attachment.modules.shape.routable
    inputs = adapter.generation_batch(images, PROMPTS)
    with torch.no_grad():
        dense = adapter.model.generate(
            **inputs, max_new_tokens=4, do_sample=False, pad_token_id=adapter.tokenizer.pad_token_id
        )
        dense_logits = adapter.model(**inputs).logits
    forced = {l: torch.zeros(3, dtype=torch.bool) for l in routable}
    routed = generate_with_roe(adapter, images, PROMPTS, max_new_tokens=4, forced=forced)
    with routing(RoutingPlan.force_all(False, routable, 3)), torch.no_grad():
        forced_logits = adapter.model(**inputs).logits
    assert torch.equal(routed.output_ids, dense)
    assert torch.equal(forced_logits, dense_logits)


def _training_batch(adapter, images):
    examples = [
        ChatExample(images[0], [("<image>\nwhat colour?", "red"), ("and the shape?", "a square")]),
        ChatExample(images[1], [("<image>\nname the colour", "navy")]),
    ]
    batch = adapter.train_batch(examples)
    labels = batch.pop("labels")
    return (
        batch,
        labels,
        training_segments(batch["input_ids"], labels, batch["attention_mask"], ImageTokens.of(adapter)),
    )


def test_tokens_train_from_stage_one_and_executing_everything_is_the_dense_model(tokens):
    adapter, attachment, images = tokens
    batch, _labels, segments = _training_batch(adapter, images)
    with torch.no_grad():
        dense = adapter.model(**batch).logits
    runs = {
        "stage 0": ScheduleState(stage=0, beta=random_skip_bias(0.3)),
        "stage 1": ScheduleState(stage=1, tau=1.0, beta=0.0),
        "all execute": ScheduleState(stage=1, tau=1.0, beta=1e9),
    }
    grads, logits = {}, {}
    for name, schedule in runs.items():
        attachment.modules.zero_grad(set_to_none=True)
        with routing(TrainingRouting(segments, schedule, keys=[0, 1])) as ctx:
            logits[name] = adapter.model(**batch).logits
        (logits[name].float().pow(2).mean() + sum(p.sum() for p in ctx.p_skip.values())).backward()
        grads[name] = attachment.modules.tokens.turn.grad
        assert ctx.stream.width == 1 + segments.n_turns and ctx.stream.next_layer == len(adapter.language_layers())
    assert grads["stage 0"] is None or not grads["stage 0"].any()  # the router is not consulted in stage 0
    assert grads["stage 1"].abs().sum() > 0
    torch.testing.assert_close(logits["all execute"], dense, rtol=1e-4, atol=1e-5)  # no real token sees a slot


def test_tokens_are_saved_and_reloaded(tokens, tmp_path):
    adapter, attachment, images = tokens
    path = tmp_path / "roe.safetensors"
    save_roe(path, attachment.modules, family=adapter.family, base_model="tiny", base_hash="h", rho=0.3)
    loaded, metadata = load_roe(path, family=adapter.family, base_hash="h")
    assert metadata["variant"] == "tokens" and loaded.shape == attachment.modules.shape
    assert torch.equal(loaded.tokens.prefix, attachment.modules.tokens.prefix.detach().cpu())
    before = generate_with_roe(adapter, images, PROMPTS, max_new_tokens=3)
    attachment.remove()
    try:
        again = attach(adapter, loaded)
        after = generate_with_roe(adapter, images, PROMPTS, max_new_tokens=3)
        again.remove()
    finally:
        attach(adapter, attachment.modules)
    assert torch.equal(before.output_ids, after.output_ids)
    for l in attachment.modules.shape.routable:
        assert torch.equal(before.plan.applied[l], after.plan.applied[l])
