"""A trained model as another evaluation harness drives it (the lmms-eval plugin, `dmole.lmms`): batches of images
and prompts in, replies out, decoded by the toolkit's one rule, as `eval` decodes.

Each sample is routed from its own image and prompt, as `embed` and `eval` route a test sample: D-MoLE's routers
score the sample's sequence embedding (computed here with the experts off, as `embed` computes it on the frozen
base) under the eval stage's routing options; a method without routers routes every sample alike. The harness's
task names are never looked at: routing by them would be oracle task identity. ``roe`` runs the latest
route-train weights on the model they were trained on (the base, or a continual model whose experts are routed as
above), as `eval --roe` does.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from PIL import Image

from .errors import UserError
from .evaluation.predict import AroundBatch, generate_batch
from .methods import get_method
from .methods.base import ZERO_SHOT
from .project import Project
from .registry import EVAL, ROE_EVAL
from .resolve import stage_options
from .runner import require_built_on_model


@dataclass
class HarnessModel:
    """``name`` says which model it is; ``route(images, prompts)`` gives each sample's experts (None: nothing is
    routed); ``around(routes)`` the context a batch generates in."""

    adapter: Any
    model: Any
    name: str
    route: Callable[[list[Image.Image], list[str]], list] | None = None
    around: Callable[[list | None], AroundBatch | None] = lambda routes: None

    def generate(
        self, images: list[Image.Image], prompts: list[str], *, max_new_tokens: int, min_new_tokens: int = 0
    ) -> list[str]:
        """Greedy replies to one batch, each sample with its own route."""
        routes = self.route(images, prompts) if self.route else None
        return generate_batch(
            self.adapter,
            self.model,
            images,
            prompts,
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
            around_batch=self.around(routes),
        )


def open_model(
    project: Project,
    after: str | None = None,
    *,
    method: str | None = None,
    roe: bool = False,
    options: dict | None = None,
    device: str | None = None,
) -> HarnessModel:
    """The model of ``method`` (default: the workspace's) after task ``after`` (``zero-shot``: the base model), or
    with ``roe`` the RoE model. ``options`` are the eval stage's (`dmole eval --help`; with ``roe`` roe-eval's)
    over the workspace's defaults; ``device`` defaults to CUDA when there is one."""
    if roe:
        if after is not None or method is not None:
            raise UserError(
                "roe=true evaluates the latest route-train weights on the model they were trained on; "
                "it takes no after or method"
            )
        return _roe_model(project, options or {}, device)
    if after is None:
        raise UserError(
            f"say which model: after=TASK (one of {', '.join(project.config.task_names)}), "
            f"after={ZERO_SHOT}, or roe=true"
        )
    options = stage_options(project.config, EVAL.name, {**(options or {}), "method": method})
    if after == ZERO_SHOT:
        require_built_on_model(project, [])  # a missing model folder is one line
        adapter = project.load_model(device=device)
        return HarnessModel(adapter, adapter.model, "base model")
    chosen = get_method(options.method or project.config.method)
    chosen.check_after(project, after)
    model = require_built_on_model(project, chosen.eval_inputs(project, after))["model"]  # what `eval` reads
    adapter = project.load_model(device=device)
    plan = chosen.evaluation(project, after, adapter)
    return HarnessModel(
        adapter,
        plan.model,
        f"{chosen.name} after {after}",
        _sample_routes(project, chosen, after, adapter, plan, options, model),
        plan.around,
    )


def _sample_routes(project: Project, method, after: str, adapter, plan, options, model: str) -> Callable | None:
    """``route(images, prompts)`` of ``method``'s plan after ``after``: D-MoLE's routers score each sample's
    embedding (experts off) and eval's routing rule picks its experts; a method without routers routes every
    sample alike (its route does not depend on the task it is asked for); None when nothing is routed. ``model``
    is the model's identity, which the embeddings' metadata records."""
    if not method.routes:
        if plan.routes_for is None:
            return None
        [fixed], _ = plan.routes_for(plan.tasks[0], [None], options)
        return lambda images, prompts: [fixed] * len(prompts)
    from .dmole.bank import load_bank
    from .dmole.embedding import embedding_metadata, sequence_embeddings
    from .dmole.routing import evaluation_routes

    bank = load_bank(project, project.config.task_names[: project.config.task_index(after)])
    metadata = embedding_metadata(adapter, model)

    def route(images: list[Image.Image], prompts: list[str]) -> list:
        with plan.model.disable_adapter() if hasattr(plan.model, "disable_adapter") else nullcontext():
            embeddings = sequence_embeddings(adapter, images, prompts)
        return evaluation_routes(bank.errors(embeddings, metadata), bank.thresholds, options.for_task(None))

    return route


def _roe_model(project: Project, options: dict, device: str | None) -> HarnessModel:
    """The latest route-train weights attached to what they were trained on (the base with its stage-2 backbone,
    or a continual model whose experts are routed per sample as above), each batch under a fresh routing plan with
    roe-eval's batch rule."""
    from .roe.evaluation import TrainedRoE
    from .roe.inference import RequestRecorder

    options = stage_options(project.config, ROE_EVAL.name, options)
    trained = TrainedRoE.latest(project)
    model = require_built_on_model(project, [trained.version, *trained.continual_versions])["model"]
    adapter, _, continual = trained.routed_model(project, device)
    batch_rule = options.batch_rule or trained.config["batch_rule"]
    name = f"RoE ({trained.version.stage} v{trained.version.number}) on {trained.reference(project)}"
    if continual is None:
        return HarnessModel(adapter, adapter.model, name, around=lambda routes: RequestRecorder(batch_rule))
    method = get_method(continual.options.method)
    route = _sample_routes(project, method, trained.after, adapter, continual.plan, continual.options, model)
    return HarnessModel(
        adapter,
        continual.plan.model,
        name,
        route,
        lambda routes: RequestRecorder(
            batch_rule, experts=(continual.batches(routes) if routes is not None else None, continual.rows)
        ),
    )
