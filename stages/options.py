"""Every stage's options, in one place: the single source of truth for their names, types, defaults and help.

Each stage's declaration (`registry.py`) names its model; the CLI generates the stage command's flags from it
(`dmole_cli/options_cli.py`), the workspace's ``stages`` section is validated against it, and every stage function
resolves its options with `resolve.stage_options`, so a notebook call and the same command line run with the same
options and hash alike. This module knows no stage and no method: the method a model names is checked against the
method registry where the options are resolved.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from .config import SEED_LIMIT, Seed, Strict, TaskSpec
from .errors import UserError
from .metrics import GRADERS
from .metrics.text_rules import RULES as TEXT_RULES

_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}


def parse_pairs(pairs: list[str]) -> dict[str, Any]:
    """``["temperature=2", "name=x"]`` -> ``{"temperature": 2, "name": "x"}`` (JSON values, else strings)."""
    values = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"expected KEY=VALUE, got {pair!r}")
        try:
            values[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            values[key.strip()] = text
    return values


class _MethodChoice(Strict):
    method: str | None = Field(
        default=None, description="the continual method (`dmole methods` lists them); default: the workspace's"
    )


class EmbedOptions(Strict):
    batch_size: int = Field(
        default=64, gt=0, description="samples per forward pass (a sample's embedding is the same in any batch)"
    )


class FitRouterOptions(Strict):
    quantile: float = Field(
        default=0.95, gt=0, lt=1, description="threshold = this quantile of the task's own reconstruction errors"
    )
    hidden: int = Field(default=128, gt=0, description="autoencoder bottleneck width")
    output_activation: Literal["sigmoid", "none"] = Field(
        default="sigmoid", description="decoder output: sigmoid or none"
    )
    lr: float = Field(default=5e-3, gt=0, description="autoencoder learning rate")
    min_lr: float = Field(
        default=1e-3,
        ge=0,
        description="floor of the learning rate's cosine annealing, stepped once per epoch over 1000 epochs",
    )
    batch_size: int = Field(default=1024, gt=0, description="embeddings per autoencoder step")
    max_epochs: int = Field(default=1000, gt=0, description="epochs at most (early stopping ends sooner)")
    patience: int = Field(default=10, gt=0, description="epochs without improvement before stopping")
    max_fit_samples: int | None = Field(default=None, gt=0, description="seeded cap on the fit set (default: all)")
    min_acceptance: float = Field(
        default=0.5, ge=0, le=1, description="warn when the router accepts fewer of its own test samples"
    )
    seed: Seed = Field(default=42, description="seed of the fit-set draw and the autoencoder")


class ZcScoreOptions(Strict):
    portion: float = Field(
        default=0.01, gt=0, le=1, description="fraction p of the training set (at least 4 batches are used)"
    )
    batch_size: int = Field(default=2, gt=0, description="per-device batch b")
    include_mlp: bool = Field(default=False, description="also score MLP projections (default: attention only)")
    fuse_qkv: bool = Field(
        default=False,
        description="score each layer's q, k and v projections as one qkv "
        "candidate, the fused projection they were split from "
        "(InternVL2's wqkv and attn.qkv; on under --profile reference)",
    )
    max_tiles: int = Field(
        default=1,
        ge=1,
        description="image tiles per sample at most, whatever the workspace's "
        "max_tiles: 1 scores one whole-image view, as the reference "
        "(spec §5; compute_zc_score.sh sets no dynamic tiling)",
    )
    seed: Seed = Field(default=42, description="seed of the sample draw")


def parse_budget(text: str) -> tuple[float | None, int | None]:
    """'0.5' -> a module fraction; '2M', '500k', '120000' -> a parameter count."""
    value = str(text).strip().lower()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kmg]?)", value)
    if not match:
        raise ValueError(f"budget {text!r} is neither a fraction in (0, 1] nor a parameter count like 2M")
    number, suffix = float(match.group(1)), match.group(2)
    if suffix or (number > 1 and number.is_integer()):
        return None, int(number * _SUFFIX[suffix])
    if not 0 < number <= 1:
        raise ValueError(f"budget {text!r} is out of range: a fraction must be in (0, 1]")
    return number, None


class AllocateOptions(_MethodChoice):
    budget: str = Field(
        default="0.5", description="a fraction of the candidate modules (0.5) or a parameter count (2M, 500k)"
    )
    rank: int = Field(default=8, gt=0, description="expert rank; train-task reads it from the allocation")
    expert_type: Literal["lora", "dora"] = Field(
        default="lora",
        description="the experts: LoRA, or DoRA (PEFT's use_dora; its magnitudes, one per output "
        "feature, count in the budget); train-task reads it from the allocation",
    )

    @field_validator("budget")
    @classmethod
    def _parses(cls, budget: str) -> str:
        parse_budget(budget)
        return budget


# train-task's and route-train's input pipeline (stages/training/inputs.py)
InputWorkers = Annotated[
    int | None,
    Field(
        ge=0,
        description="worker processes that build the next micro-batches' "
        "inputs (images, processor, tokens) during the step; default 2 on a GPU, "
        "0 (inline) on a CPU, where they would compete with the step",
    ),
]


def trains_in_bf16(precision: str, device_type: str) -> bool:
    """Whether train-task's ``precision`` autocasts to bf16 on a ``device_type`` ("cuda", "cpu") device: always
    for "bf16", on CUDA only for "auto", never for "fp32"."""
    return precision == "bf16" or (precision == "auto" and device_type == "cuda")


class TrainTaskOptions(_MethodChoice):
    epochs: float | None = Field(default=None, gt=0, description="default: the task's registry value, else 1")
    batch_size: int | None = Field(
        default=None,
        gt=0,
        description="global batch of one optimizer step = per device x devices x grad_accum; "
        "default: the task's registry value, else 8",
    )
    grad_accum: int = Field(
        default=1, gt=0, description="micro-batches per optimizer step on each device (same step, less memory)"
    )
    max_length: int | None = Field(default=2048, gt=0, description="tokens kept per sample; image tokens are never cut")
    group_by_length: bool = Field(
        default=False, description="batch samples of similar length together (the reference's group_by_length)"
    )
    lr: float = Field(default=1e-4, gt=0, description="AdamW learning rate")
    weight_decay: float = Field(default=0.01, ge=0, description="AdamW weight decay")
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1, description="linear warm-up share of the steps")
    clip: float = Field(default=1.0, ge=0, description="gradient-norm clip (0: none)")
    train_routing: Literal["per-sample", "batch-vote"] = Field(
        default="per-sample",
        description="D-MoLE: each sample's past expert (per-sample) or one per batch by vote "
        "(batch-vote, the reference)",
    )
    dropout_mask: Literal["per-expert", "shared"] = Field(
        default="per-expert",
        description="D-MoLE: the LoRA dropout mask of a module's routed experts: one each (per-expert, "
        "PEFT's and the reference's) or one per module forward that they share (shared, fewer "
        "random draws)",
    )
    vote_size: int | None = Field(
        default=None,
        gt=0,
        description="batch-vote: samples per vote, consecutive in each micro-batch (the "
        "reference votes per device batch); default: the task's registry value, else "
        "the whole micro-batch",
    )
    hparams: dict[str, float | int | bool | str] = Field(
        default_factory=dict,
        description="the method's own hyperparameters (`dmole methods --show NAME`), over the "
        "workspace's `methods` section; on the command line KEY=VALUE, repeatable",
    )
    expert_type: Literal["lora", "dora"] | None = Field(
        default=None,
        description="the adapters a LoRA method trains: LoRA or DoRA (PEFT's use_dora); default: the "
        "allocation's for D-MoLE, else lora",
    )
    checkpoint_every: int = Field(
        default=50,
        ge=0,
        description="optimizer steps between resume checkpoints; a killed run resumes from the last one",
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto", description="bf16 autocast: auto (on CUDA only), bf16 (always) or fp32 (never)"
    )
    gradient_checkpointing: bool = Field(default=False, description="recompute activations in backward to save memory")
    seed: Seed = Field(default=42, description="seed of the adapter initialisation and the data order")
    input_workers: InputWorkers = None

    def epochs_for(self, task: TaskSpec | None) -> float:
        """The epochs of ``task``: these options', else its registry value, else 1."""
        return self.epochs or (task.epochs if task and task.epochs else 1.0)

    def batch_for(self, task: TaskSpec | None) -> int:
        """The global batch of ``task``: these options', else its registry value, else 8."""
        return self.batch_size or (task.batch_size if task and task.batch_size else 8)


DEFAULT_EVAL_BATCH_SIZE = 8


class EvalOptions(_MethodChoice):
    batch_size: int | None = Field(
        default=None,
        gt=0,
        description=f"generation batch size; default: under batch-vote the task's registry "
        f"eval_batch_size (the reference's vote group), else {DEFAULT_EVAL_BATCH_SIZE}",
    )
    routing: Literal["per-sample", "batch-vote"] = Field(
        default="per-sample", description="per-sample (batch-size independent) or batch-vote (the reference)"
    )
    routing_order: Literal["filter-then-rank", "rank-then-filter"] = Field(
        default="filter-then-rank", description="threshold the routers, then rank the accepting ones (or the reverse)"
    )
    threshold_scale: float = Field(default=1.0, gt=0, description="multiply every router threshold")
    ranking: Literal["relative", "error"] = Field(
        default="relative",
        description="order of the routers that accept a sample: relative (its error over the "
        "router's own threshold, which puts the autoencoders' scales on one; "
        "measured, docs/dmole.md) or error (the raw reconstruction error, the "
        "paper's)",
    )
    top: int = Field(default=2, gt=0, description="experts per sample at most")
    vote_support: float = Field(default=0.3, gt=0, le=1, description="batch-vote: share of a batch an expert needs")
    second_expert: Literal["partner", "any", "margin", "weighted"] = Field(
        default="partner",
        description="per-sample rule for a second expert: partner (the past task the first "
        "task's experts were trained beside for this input, as train-task chose it; "
        "measured best, docs/dmole.md), "
        "margin (its relative error within second_margin x the first's), any "
        "accepting router (the paper's top-2), or weighted (by router confidence)",
    )
    second_margin: float = Field(default=2.0, gt=0, description="the margin rule's factor")
    caption_tokenizer: Literal["simple", "ptb", "ptb-python", "ptb-else-python"] = Field(
        default="simple",
        description="caption tokenizer: simple, ptb (pycocoevalcap's, needs java), ptb-python (its "
        "rules without java) or ptb-else-python (ptb where java is, else ptb-python, "
        "said in one line)",
    )
    min_acceptance: float = Field(
        default=0.5, ge=0, le=1, description="warn when a seen task's own router accepts fewer of its samples"
    )
    grader: Literal[GRADERS] = Field(
        default="dmole",
        description="whose rules score the replies: dmole (each family's metric), mcitlib or coin (their "
        "scripts' rule per task, docs/metrics.md)",
    )

    def for_task(self, task: TaskSpec | None) -> EvalOptions:
        """These options with the generation batch of ``task`` resolved (see ``batch_size``)."""
        registry = task.eval_batch_size if task is not None and self.routing == "batch-vote" else None
        return self.model_copy(update={"batch_size": self.batch_size or registry or DEFAULT_EVAL_BATCH_SIZE})


class RescoreOptions(_MethodChoice):
    rules: list[str] = Field(
        default=list(TEXT_RULES),
        min_length=1,
        description="graders (dmole, mcitlib, coin: each its rule per task) and rules (strict, normalised, "
        "numeric, token-f1, or a grader's own, e.g. mcitlib-exact; docs/metrics.md) to score the stored "
        "predictions with (repeatable)",
    )

    @field_validator("rules")
    @classmethod
    def _known_rules(cls, rules: list[str]) -> list[str]:
        from .metrics.field_graders import check_name

        try:
            return list(dict.fromkeys(check_name(rule) for rule in rules))
        except UserError as error:
            raise ValueError(str(error)) from None


class GeneralOptions(_MethodChoice):
    lmms_tasks: list[str] = Field(
        default=["mme", "pope"],
        min_length=1,
        description="the general benchmarks to score the base model and the continual model on, as lmms-eval "
        "names its tasks (its --tasks; a task's data must be in the Hugging Face cache); repeatable",
    )
    include_path: str | None = Field(
        default=None, description="a folder of lmms-eval task YAMLs beside lmms-eval's own (its --include_path)"
    )
    limit: int | None = Field(
        default=None, gt=0, description="score each task's first N documents only (lmms-eval's --limit; a quick look)"
    )
    batch_size: int | None = Field(
        default=None, gt=0, description="generation batch size; default: the eval stage's (the plugin's auto)"
    )

    @field_validator("lmms_tasks")
    @classmethod
    def _names(cls, names: list[str]) -> list[str]:
        names = list(dict.fromkeys(name.strip() for name in names))
        if not all(names):
            raise ValueError("an lmms-eval task name is empty")
        return names


class RouteTrainOptions(Strict):
    skip_ratio: float = Field(
        default=0.3, ge=0.0, lt=1.0, description="ρ: target fraction of routable layers skipped by easy examples"
    )
    start: str = Field(
        default="base",
        description="what RoE is trained on: 'base', or a task name: the workspace "
        "method's continual model after that task, its experts routed per "
        "sample as in eval (backbone and experts frozen)",
    )
    warm_start: bool = Field(
        default=False,
        description="train RoE (and route-sweep's baselines) from the dense twin, the base first fine-tuned on the "
        "tasks with every layer executed, as the paper trains RoE on a model already tuned on its data; the "
        "dense reference is then the twin trained on for the same steps (off: from the base, whose own tuning "
        "is stage 2's). Nothing to warm with --from TASK: the continual model is already tuned",
    )
    router_input: Literal["pooled", "tokens"] = Field(
        default="pooled",
        description="what the routers read: masked means of the prefix and question (pooled), "
        "or learned routing tokens, the reference's (tokens)",
    )
    hinge_weight: float = Field(default=1.0, ge=0.0, description="λ: weight of the sparsity hinge")
    hinge_gamma: float = Field(default=5.0, ge=0.0, description="γ: difficulty weight exp(−γ·CE)")
    hinge_scope: Literal["example", "batch"] = Field(
        default="example",
        description="what must skip ρ: every example (example, the spec's), or the batch on average (batch: "
        "CE decides which examples skip more, which less)",
    )
    skip_estimate: Literal["soft", "straight-through"] = Field(
        default="soft",
        description="the skip rate s_i the hinge reads: the mean soft skip probability (soft, the "
        "spec's), or the share of decisions over 1/2, as inference takes them, with the "
        "soft rate's gradient (straight-through)",
    )
    router_prior: Literal["none", "redundancy"] = Field(
        default="none",
        description="a fixed skip-logit offset per layer added to its router: none (the spec's), or "
        "redundancy: +prior_margin on the round(ρ·routable) layers whose output changes "
        "their input least on training data (static dropping's choice), −prior_margin "
        "on the others; the routers learn per-example departures from it",
    )
    prior_margin: float = Field(default=1.0, ge=0.0, description="size of the redundancy prior's offset (logits)")
    prior_samples: int = Field(
        default=256, gt=0, description="training samples that measure layer redundancy for router_prior redundancy"
    )
    tau0: float = Field(default=10.0, gt=0.0, description="τ₀: the router temperature at the start of stage 1")
    epochs: float = Field(default=1.0, gt=0.0, description="passes over the training subset")
    batch_size: int = Field(
        default=16,
        gt=0,
        description="examples per optimizer step (the global batch: per device x devices x grad_accum)",
    )
    grad_accum: int = Field(
        default=1, gt=0, description="micro-batches per optimizer step on each device (same step, less memory)"
    )
    roe_lr: float = Field(default=4e-4, gt=0.0, description="lr of routers and adapters")
    router_lr: float | None = Field(default=None, gt=0.0, description="router lr if not roe_lr")
    backbone_lr: float = Field(default=2e-6, gt=0.0, description="LLM and projector lr in stage 2 (full)")
    stage2_mode: Literal["frozen", "full", "lora"] | None = Field(
        default=None,
        description="backbone in stage 2: frozen, fully tuned with the projector (full), or LoRA on "
        "the LM's projections plus the projector (lora); default full from the base, "
        "frozen (the only choice) from a continual model",
    )
    lora_rank: int = Field(default=16, gt=0, description="LoRA rank in stage2_mode lora")
    lora_alpha: int = Field(default=32, gt=0, description="LoRA alpha in stage2_mode lora")
    lora_lr: float = Field(default=1e-4, gt=0.0, description="LoRA lr in stage2_mode lora")
    stage1_start: float = Field(default=0.3, ge=0.0, le=1.0, description="fraction of steps before routers train")
    stage2_start: float = Field(default=0.5, ge=0.0, le=1.0, description="fraction of steps before joint tuning")
    warmup_ratio: float = Field(default=0.05, ge=0.0, lt=1.0, description="linear warm-up share of the steps")
    adapter_rank: int | None = Field(default=None, gt=0, description="adapter bottleneck r (default D/4)")
    always_execute: list[int] = Field(default=[0], description="layers never skipped (must include 0)")
    batch_rule: Literal["gather", "or"] = Field(default="gather", description="mixed decisions in a batch")
    data_fraction: float = Field(default=1.0, gt=0.0, le=1.0, description="seeded share of the training data")
    eval_batch_size: int = Field(default=8, gt=0, description="prompts per generate call in the evaluation")
    checkpoint_every: int = Field(
        default=50,
        ge=0,
        description="optimizer steps between resume checkpoints; a killed run resumes from the last one",
    )
    max_eval_samples: int | None = Field(default=None, gt=0, description="first N test samples per task")
    input_workers: InputWorkers = None

    @model_validator(mode="after")
    def _ordered_stages(self) -> RouteTrainOptions:
        if self.stage1_start > self.stage2_start:
            raise ValueError("stage1_start must not exceed stage2_start")
        if self.warm_start and self.start == "base" and self.stage2_mode == "frozen":
            raise ValueError(
                "warm_start starts from the dense twin, which stage 2 tunes: with stage2_mode frozen there is none "
                "(add --no-warm-start)"
            )
        return self


class SweepOptions(_MethodChoice):
    grid: str | None = Field(
        default=None,
        description="the hyperparameter and its values, KEY=V1,V2,... (default: "
        "the method's own strength and grid, `dmole methods --show`)",
    )
    hparams: dict[str, float | int | bool | str] = Field(
        default={}, description="hyperparameters fixed at every grid value (e.g. parity=true), KEY=VALUE"
    )


class RepeatOptions(_MethodChoice):
    seeds: list[int] = Field(
        default=[42],
        min_length=1,
        description="seeds: each run sets it in every stage that draws at random (adapter initialisation and data "
        "order, router fit, proxy samples); repeatable",
    )
    orders: list[str] = Field(
        default=["default"],
        min_length=1,
        description="task orders: default (the workspace's), reverse, or every task once, comma-separated "
        "(t3,t1,t2); repeatable",
    )
    hparams: dict[str, float | int | bool | str] = Field(
        default={}, description="the method's hyperparameters in every run (e.g. parity=true), KEY=VALUE"
    )

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, seeds: list[int]) -> list[int]:
        """Each in `Seed`'s range (a list of `Seed` would check it itself, but typer makes no flag of one)."""
        if any(not 0 <= seed < SEED_LIMIT for seed in seeds):
            raise ValueError(f"every seed must lie in [0, {SEED_LIMIT})")
        return seeds


class RoEEvalOptions(Strict):
    batch_size: int = Field(default=8, gt=0, description="prompts per generate call")
    batch_rule: Literal["gather", "or"] | None = Field(
        default=None, description="rows with different decisions in one batch: gather or OR (default: route-train's)"
    )
    max_samples: int | None = Field(default=None, gt=0, description="first N test samples per task (default: all)")


class RouteSweepOptions(Strict):
    """`route-sweep`: RoE at several skip targets against static layer dropping and random routing at the realised
    skip. Each run trains with route-train's options (the workspace's route-train section), ρ set per target."""

    skip_ratios: list[float] = Field(
        default=[0.1, 0.2, 0.3, 0.4], min_length=1, description="targets ρ to train RoE at (repeatable)"
    )
    seeds: list[int] = Field(
        default=[42, 43],
        min_length=1,
        description="training seeds; every run is repeated per seed, the spread is reported",
    )
    baselines: list[str] = Field(
        default=["static", "random"],
        description="baselines at RoE's realised skip: static (the same layers for "
        "every example, those whose output changes their input least on "
        "training data) and random (each example and layer at the rate)",
    )
    change_samples: int = Field(
        default=256, gt=0, description="training samples that rank the layers for static dropping"
    )
    speed_prompts: int = Field(default=2, ge=0, description="test prompts per task timed at batch 1 (0: no timing)")
    speed_new_tokens: int = Field(default=32, gt=0, description="new tokens per timed generate call")
    speed_repeats: int = Field(default=3, gt=0, description="timings per prompt and variant (the median is kept)")

    @field_validator("skip_ratios")
    @classmethod
    def _targets(cls, targets: list[float]) -> list[float]:
        if any(not 0.0 < t < 1.0 for t in targets):
            raise ValueError("every skip ratio must lie in (0, 1)")
        return sorted(set(targets))

    @field_validator("baselines")
    @classmethod
    def _known_baselines(cls, baselines: list[str]) -> list[str]:
        if unknown := set(baselines) - {"static", "random"}:
            raise ValueError(f"unknown baselines {sorted(unknown)}; choose static and/or random")
        return list(dict.fromkeys(baselines))


def explicit(given: BaseModel | Mapping | None) -> dict:
    """What a caller set: the fields set explicitly on an options object, or a mapping's non-None values."""
    if given is None:
        return {}
    if isinstance(given, BaseModel):
        return given.model_dump(include=given.model_fields_set)
    return {key: value for key, value in given.items() if value is not None}


# options that change how fast a stage runs, never what it computes: kept out of its config hash
SPEED_ONLY = frozenset({"input_workers"})


# options added after artifacts existed, with the values that compute what dmole computed before them: at those
# values they stay out of the config hash, so an upgrade leaves the earlier artifacts up to date
NEUTRAL = {
    "expert_type": ("lora", None),
    "dropout_mask": ("per-expert",),
    "grader": ("dmole",),
    "hinge_scope": ("example",),
    "warm_start": (False,),
    "skip_text_only": (False,),  # a task's field (config.TaskSpec), hashed with the same rule by the stages
}


def hashed(options: BaseModel) -> dict:
    """What of ``options`` (or a task, `config.TaskSpec`) goes into a stage's config (and so decides whether it is up
    to date)."""
    return {
        key: value
        for key, value in options.model_dump(exclude=set(SPEED_ONLY)).items()
        if value not in NEUTRAL.get(key, ())
    }
