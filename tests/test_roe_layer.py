"""RoE inference on tiny random models of every family: forced execute equals the base model (T1), a
skipped layer never runs and writes no KV (T2), cached generation equals a cache-free reference under the
same decisions, a mixed-decision batch equals each row alone (T3), save/reload (T8)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from dmole.stages.models.registry import load_family
from dmole.stages.models.tiny import build_tiny
from dmole.stages.roe.attach import RoEConfigError, attach, roe_shape
from dmole.stages.roe.inference import _warn_fallback, generate_with_roe
from dmole.stages.roe.modules import RoEModules, RoEShape
from dmole.stages.roe.plan import RoutingPlan, routing
from dmole.stages.roe.segments import Segments
from dmole.stages.roe.weights import load_roe, save_roe
from tiny_sizes import small_lm

FAMILIES = ("llava", "internvl", "qwen2vl")
SIZE = small_lm()
NEW = 5
PROMPTS = ["what colour is it?", "a much longer question about the shape in the picture", "hi"]


@pytest.fixture(scope="module", params=FAMILIES)
def routed(request, tmp_path_factory):
    """A tiny model with RoE attached; routers are random, so decisions are forced where it matters."""
    adapter = load_family(build_tiny(request.param, tmp_path_factory.mktemp(request.param), size=SIZE))
    torch.manual_seed(0)
    attachment = attach(adapter, RoEModules(roe_shape(adapter, [0])))
    images = [Image.new("RGB", (16, 16), c) for c in ("red", "navy", "white")]
    return adapter, attachment, images


def _generate(adapter, images, prompts, **kwargs):
    inputs = adapter.generation_batch(images, prompts)
    out = adapter.model.generate(
        **inputs,
        max_new_tokens=NEW,
        min_new_tokens=NEW,
        do_sample=False,
        num_beams=1,
        pad_token_id=adapter.tokenizer.pad_token_id,
        **kwargs,
    )
    return inputs, out


def _mixed(routable, rows):
    pattern = [[l % 2 == 1, l % 3 == 0, True] for l in routable]
    return {l: torch.tensor(p[:rows]) for l, p in zip(routable, pattern)}


def test_forced_execute_equals_base(routed):
    adapter, attachment, images = routed
    inputs, dense = _generate(adapter, images, PROMPTS)
    with torch.no_grad():
        dense_logits = adapter.model(**inputs).logits
    plan = RoutingPlan.force_all(False, attachment.modules.shape.routable, 3)
    with routing(plan):
        _, forced = _generate(adapter, images, PROMPTS)
    with routing(RoutingPlan.force_all(False, attachment.modules.shape.routable, 3)), torch.no_grad():
        forced_logits = adapter.model(**inputs).logits
    assert torch.equal(dense, forced)
    assert torch.equal(dense_logits, forced_logits)
    assert not any(d.any() for d in plan.applied.values())


def test_skipped_layer_never_runs_and_keeps_no_cache(routed):
    adapter, attachment, images = routed
    routable = attachment.modules.shape.routable
    layers = adapter.language_layers()
    calls = {l: 0 for l in routable}
    hooks = [
        layers[l].self_attn.register_forward_hook(lambda *_, l=l: calls.__setitem__(l, calls[l] + 1)) for l in routable
    ]
    try:
        with routing(RoutingPlan.force_all(True, routable, 1)):
            _, out = _generate(adapter, images[:1], PROMPTS[:1], return_dict_in_generate=True)
    finally:
        for hook in hooks:
            hook.remove()
    assert out.sequences.shape[1] > NEW
    assert calls == {l: 0 for l in routable}
    cache = out.past_key_values
    assert all(not cache.layers[l].is_initialized for l in routable)
    assert cache.layers[0].keys.shape[-2] == out.sequences.shape[1] - 1


def _reference(adapter, images, prompts, forced):
    """Greedy decoding by full forwards without a KV cache, under the same per-layer decisions."""
    inputs = adapter.generation_batch(images, prompts)
    eos = adapter.tokenizer.eos_token_id
    for _ in range(NEW):
        with routing(RoutingPlan(forced=forced)), torch.no_grad():
            logits = adapter.model(**inputs, use_cache=False).logits[:, -1]
        logits[:, eos] = float("-inf")  # as min_new_tokens does in generate
        step = logits.argmax(-1, keepdim=True)
        inputs["input_ids"] = torch.cat([inputs["input_ids"], step], dim=1)
        inputs["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(step)], dim=1)
        if "mm_token_type_ids" in inputs:
            inputs["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(step)], dim=1)
    return inputs["input_ids"]


def test_cached_generation_equals_cache_free_reference(routed):
    adapter, attachment, images = routed
    forced = _mixed(attachment.modules.shape.routable, 1)
    with routing(RoutingPlan(forced=forced)):
        _, generated = _generate(adapter, images[:1], PROMPTS[:1])
    assert torch.equal(generated, _reference(adapter, images[:1], PROMPTS[:1], forced))


def test_mixed_batch_matches_each_row_alone(routed):
    adapter, attachment, images = routed
    routable = attachment.modules.shape.routable
    forced = _mixed(routable, 3)
    batch = generate_with_roe(adapter, images, PROMPTS, max_new_tokens=NEW, min_new_tokens=NEW, forced=forced)
    assert batch.plan.batch_rule_applied == "gather"
    assert any(0 < int(d.sum()) < 3 for d in batch.plan.applied.values())
    for row in range(3):
        alone = generate_with_roe(
            adapter,
            images[row : row + 1],
            PROMPTS[row : row + 1],
            max_new_tokens=NEW,
            min_new_tokens=NEW,
            forced={l: d[row : row + 1] for l, d in forced.items()},
        )
        assert alone.texts == batch.texts[row : row + 1]


def test_or_rule_is_flagged_and_executes_for_all(routed):
    adapter, attachment, images = routed
    forced = _mixed(attachment.modules.shape.routable, 3)
    result = generate_with_roe(adapter, images, PROMPTS, max_new_tokens=2, batch_rule="or", forced=forced)
    for layer, decided in result.plan.decided.items():
        assert torch.equal(result.plan.applied[layer], decided if decided.all() else torch.zeros_like(decided))


def test_unknown_layer_argument_falls_back_to_or_with_a_warning(routed):
    _, attachment, _ = routed
    layer = attachment.modules.shape.routable[0]
    turn = torch.tensor([[0, 0, 1, 1]] * 3)
    plan = RoutingPlan(forced=_mixed([layer], 3), segments=Segments(turn, turn == 1))
    routed_forward = attachment.layers[0].forward
    routed_forward._decide(plan, torch.zeros(3, 4, SIZE.lm_hidden), {"extra_rows": torch.zeros(3, 4)})
    assert plan.batch_rule_applied == "or" and "extra_rows" in plan.fallback_reason
    assert not plan.applied[layer].any()
    with pytest.warns(UserWarning, match="OR batch rule"):
        _warn_fallback(plan)


def test_save_reload_reproduces_decisions(routed, tmp_path):
    adapter, attachment, images = routed
    first = generate_with_roe(adapter, images, PROMPTS, max_new_tokens=NEW)
    path = tmp_path / "roe.safetensors"
    save_roe(path, attachment.modules, family=adapter.family, base_model="tiny", base_hash="abc", rho=0.3)
    loaded, metadata = load_roe(path, family=adapter.family, base_hash="abc")
    assert metadata["routable"] == str(list(attachment.modules.shape.routable))
    with torch.no_grad():
        for p in attachment.modules.parameters():
            p.normal_()
    attachment.modules.load_state_dict(loaded.state_dict())
    second = generate_with_roe(adapter, images, PROMPTS, max_new_tokens=NEW)
    assert second.texts == first.texts
    for layer in first.plan.logits:
        assert torch.equal(first.plan.logits[layer], second.plan.logits[layer])
        assert torch.equal(first.plan.applied[layer], second.plan.applied[layer])
    with pytest.raises(RoEConfigError, match="different base model"):
        load_roe(path, family=adapter.family, base_hash="other")


def test_layer_zero_router_is_refused(routed):
    adapter, attachment, _ = routed
    shape = attachment.modules.shape
    with pytest.raises(RoEConfigError, match=r"route layers \[0\]"):
        attach(adapter, RoEModules(RoEShape(shape.d_model, shape.rank, shape.n_layers, (0, *shape.routable))))
    with pytest.raises(RoEConfigError, match="must contain layer 0"):
        roe_shape(adapter, [1])
