"""D-MoLE (spec/dmole.md): per task, new LoRA experts on the allocated modules, trained with each sample's one
past task routed in; at evaluation each test sample goes to up to two tasks' experts by the autoencoder routers.

Its ablations (paper Table 4) are the same method with another allocation rule: ``dmole-vision-only``,
``dmole-language-only``, ``dmole-pooled``, ``dmole-uniform``.
"""

from __future__ import annotations

from pydantic import Field

from dmole.artifacts.io import read_json, write_parquet

from ..config import Strict
from ..dmole.allocation import RULES
from ..errors import UserError
from ..registry import ALLOCATE, EMBED
from .base import ContinualMethod, EvalPlan, TrainRun, method_flag
from .lora_trainer import LoraTrainer


class DMoLEHyper(Strict):
    """The expert rank is the allocation's (``allocate --rank``); these are the rest of its LoRA settings."""

    alpha: int | None = Field(
        default=None,
        gt=0,
        description="LoRA alpha; default 2 x the allocation's rank, so the "
        "scale alpha / r is 2 at any rank (the reference ties "
        "it: internvl_chat_finetune.py, lora_alpha = 2 * "
        "use_llm_lora)",
    )
    dropout: float = Field(default=0.05, ge=0, lt=1, description="LoRA dropout (the reference's dmole.sh)")

    def lora(self, rank: int, dora: bool = False):
        """The expert's LoRA settings at the allocation's ``rank`` (a DoRA's when it allocated DoRAs): alpha as set,
        else 2 x rank."""
        from ..dmole.experts import LoraSettings

        return LoraSettings(rank, self.alpha if self.alpha is not None else 2 * rank, self.dropout, dora)


class DMoLETrainer(LoraTrainer):
    """Task t's expert, each sample routed with its training partner (under batch-vote, with its group's vote), and
    the routing it trained under recorded beside it."""

    def batch_routes(self, indices: list[int]) -> list:
        run = self.run
        if run.options.train_routing != "batch-vote" or run.task_id == 1:
            return super().batch_routes(indices)
        from ..dmole.routing import grouped_partner_votes

        votes = grouped_partner_votes(run.carried["errors"][indices], run.carried["thresholds"], run.options.vote_size)
        return [(run.task_id,) + ((p,) if p else ()) for p in votes]

    def record(self, writer) -> None:
        samples, partners, errors = self.run.samples, self.run.carried["partners"], self.run.carried["errors"]
        write_parquet(
            writer.path("routing_train.parquet"),
            {
                "sample_id": [s.id for s in samples],
                "past_task": partners,
                "errors": [list(map(float, row)) for row in errors] if errors is not None else [[] for _ in samples],
            },
        )
        writer.meta["samples_with_past_expert"] = sum(p is not None for p in partners)


class DMoLE(ContinualMethod):
    Hyper = DMoLEHyper
    allocates = True
    routes = True

    def __init__(self, rule: str = "dmole"):
        self.allocation_rule = rule
        self.name = "dmole" if rule == "dmole" else f"dmole-{rule}"
        self.summary = (
            "D-MoLE: experts on the layers a gradient proxy ranks, routed by autoencoders"
            if rule == "dmole"
            else f"D-MoLE ablation: the {rule} allocation rule"
        )

    @classmethod
    def with_ablations(cls) -> list[DMoLE]:
        return [cls(rule) for rule in RULES]

    def allocation(self, project, task: str):
        return project.store.require(self.stage(ALLOCATE.name), task, hint=ALLOCATE.hint(task) + method_flag(self.name))

    # ---- training ------------------------------------------------------------------------------------------
    def carried(self, run: TrainRun) -> list:
        from ..dmole.bank import require_embeddings, router_versions

        allocation = self.allocation(run.project, run.task)
        previous = self.trained_before(run.project, run.task_id)
        run.carried.update(allocation=allocation, partners=[None] * len(run.samples), errors=None, thresholds=None)
        if run.task_id == 1:
            return [allocation]
        past = run.project.config.task_names[: run.task_id - 1]
        # a replayed sample's embedding is its own task's
        embedded = {task: require_embeddings(run.project, task) for task in (run.task, *run.replayed)}
        run.carried.update(embedded=embedded)
        return [allocation, *embedded.values(), *router_versions(run.project, past), *previous]

    def route_partners(self, run: TrainRun) -> None:
        """Each training sample's partner, the past task whose router accepts it best (its errors and the routers'
        thresholds kept for batch-vote), into ``run.carried``. It loads the routers, and with them torch, so the
        trainer calls it: checking whether a run is up to date (`carried`) never does."""
        if run.task_id == 1:
            return
        import numpy as np

        from ..dmole.bank import load_bank
        from ..dmole.routing import training_partner

        bank = load_bank(run.project, run.project.config.task_names[: run.task_id - 1])
        own = len(run.samples) - sum(len(buffer) for buffer in run.replayed.values())
        groups = {run.task: run.samples[:own], **run.replayed}
        errors = np.concatenate(
            [train_errors(bank, run.carried["embedded"][task], task, samples) for task, samples in groups.items()]
        )
        run.carried.update(
            partners=training_partner(errors, bank.thresholds), errors=errors, thresholds=bank.thresholds
        )

    def trainer(self, run: TrainRun, adapter):
        from .lora import expert_model

        self.route_partners(run)
        arch = read_json(run.carried["allocation"].file(ALLOCATE.files.arch))
        experts = expert_model(
            run.project,
            adapter,
            loaded=dict(enumerate(self.trained_before(run.project, run.task_id), 1)),
            shared_dropout=run.options.dropout_mask == "shared",
        )
        expert_type = arch.get("expert_type", "lora")
        if run.options.expert_type not in (None, expert_type):
            raise UserError(
                f"{self.name} trains the experts its allocation sized: {run.carried['allocation']} "
                f"allocated {expert_type} experts, not {run.options.expert_type} (re-run "
                f"`{ALLOCATE.hint(run.task)} --expert-type {run.options.expert_type}"
                f"{method_flag(self.name)}`)"
            )
        routes = [(run.task_id,) + ((p,) if p is not None else ()) for p in run.carried["partners"]]
        return DMoLETrainer(
            run,
            adapter,
            experts,
            arch["selected"],
            run.hyper.lora(arch["rank"], expert_type == "dora"),
            routes,
            expected=arch["expert_parameters"],
            sidecar={
                "train_routing": run.options.train_routing,
                "vote_size": run.options.vote_size,
                "dropout_mask": run.options.dropout_mask,
            },
        )

    # ---- evaluation ------------------------------------------------------------------------------------------
    def eval_inputs(self, project, after: str) -> list:
        from ..dmole.bank import require_embeddings, router_versions

        index = project.config.task_index(after)
        names = project.config.task_names
        return (
            self.trained_before(project, index + 1)
            + router_versions(project, names[:index])
            + [require_embeddings(project, n) for n in names]
        )

    def evaluation(self, project, after: str, adapter) -> EvalPlan:
        from ..dmole.bank import load_bank
        from .lora import expert_model, experts_around

        index = project.config.task_index(after)
        experts = expert_model(project, adapter, loaded=dict(enumerate(self.trained_before(project, index + 1), 1)))
        bank = load_bank(project, project.config.task_names[:index])
        return EvalPlan(
            experts.model,
            list(project.config.task_names),
            routes_for=lambda task, samples, options, split="test": sample_routes(
                project, bank, task, samples, options, split
            ),
            around=experts_around(experts, adapter),
            rows=experts.rows,
        )


def train_errors(bank, embedded, task: str, samples: list):
    """The router bank's errors on ``samples`` of ``task`` (training samples, from its ``embed`` artifact)."""
    from ..dmole.bank import load_embeddings

    ids, matrix, metadata = load_embeddings(embedded, "train")
    position = {sample_id: i for i, sample_id in enumerate(ids)}
    missing = [s.id for s in samples if s.id not in position]
    if missing:
        raise UserError(f"sample {missing[0]!r} of '{task}' has no cached embedding; re-run `{EMBED.hint(task)}`")
    return bank.errors(matrix[[position[s.id] for s in samples]], metadata)


def sample_routes(project, bank, task: str, samples: list, options, split: str = "test"):
    """Per sample of ``task`` (from its ``split``), its routed expert set (and the router errors behind it),
    spec §9."""
    from ..dmole.bank import load_embeddings, require_embeddings
    from ..dmole.routing import evaluation_routes

    ids, matrix, metadata = load_embeddings(require_embeddings(project, task), split)
    position = {sample_id: i for i, sample_id in enumerate(ids)}
    if any(s.id not in position for s in samples):
        raise UserError(
            f"the {split} embeddings of '{task}' do not cover its {split} file; re-run `dmole embed --task {task}`"
        )
    errors = bank.errors(matrix[[position[s.id] for s in samples]], metadata)
    return evaluation_routes(errors, bank.thresholds, options.for_task(project.config.task(task))), errors


METHODS = DMoLE.with_ablations()  # D-MoLE, then its ablations
