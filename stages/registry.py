"""The registry of stages: one declaration each, the only place a stage's name is written.

A declaration gives the stage's name (its artifacts' folder in the store), its options model (`options.py`), the
names of the files its artifact holds, the command that runs it and its help. The CLI builds each stage's command
from it (flags generated from the options model, `dmole_cli/options_cli.py`), the workspace's ``stages`` section
is checked against it, and the stages, ``dmole ls`` / ``show`` and the report name a stage and its files through
it. Adding a stage: its declaration below, in ``STAGES``, and its command in `dmole_cli/`.

This module imports only the options models, so every floor of the toolkit can name a stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

from .config import Strict
from .options import (
    AllocateOptions,
    EmbedOptions,
    EvalOptions,
    FitRouterOptions,
    GeneralOptions,
    RepeatOptions,
    RescoreOptions,
    RoEEvalOptions,
    RouteSweepOptions,
    RouteTrainOptions,
    SweepOptions,
    TrainTaskOptions,
    ZcScoreOptions,
)


class Files(SimpleNamespace):
    """A stage's artifact file names by role (``FIT_ROUTER.files.router``); ``{...}`` fields are filled per file."""


@dataclass(frozen=True)
class Stage:
    name: str
    help: str
    options: type[Strict] | None = None  # what its command's flags and the workspace's `stages` section set
    files: Files = field(default_factory=Files)  # its artifact's files that other modules read, by role
    command: str = ""  # the command that runs it (default: its name)
    switch: str = ""  # the flag of ``command`` that selects it, where another stage's command runs it
    flags: dict[str, str] = field(default_factory=dict)  # option -> its flag, where not --option-name

    @property
    def command_line(self) -> tuple[str, ...]:
        """The words that run the stage: its command, and the switch that selects it."""
        return (self.command or self.name, *((self.switch,) if self.switch else ()))

    def hint(self, task: str | None = None) -> str:
        """The command line that makes the stage's artifact (of ``task``), for an error that finds none."""
        return " ".join(("dmole", *self.command_line, *(("--task", task) if task else ())))


EMBED = Stage(
    "embed",
    "Sequence representation (frozen base, no experts) of the task's train and test samples, to Parquet.",
    EmbedOptions,
    Files(split="{split}.parquet"),
)
FIT_ROUTER = Stage(
    "fit-router",
    "Fit the task's autoencoder router on its training embeddings and set its threshold.",
    FitRouterOptions,
    Files(router="router.json", weights="router.safetensors"),
)
ZC_SCORE = Stage(
    "zc-score",
    "Zero-cost proxy: gradient norm of every candidate module of both towers on the frozen base.",
    ZcScoreOptions,
    Files(scores="scores.parquet"),
)
ALLOCATE = Stage(
    "allocate",
    "Choose the task's expert modules: budget split between towers by gradient share (vision >= 25%)."
    "\n\n--method takes dmole or one of its ablations, each a named method with its own artifacts: "
    "dmole-vision-only, dmole-language-only (experts in one tower), dmole-pooled (one ranking over both "
    "towers), dmole-uniform (the same evenly spread modules for every task).",
    AllocateOptions,
    Files(arch="arch.json"),
)
TRAIN_TASK = Stage(
    "train-task",
    "Train the task's adapter for the method (`dmole methods` lists them); resumes "
    "automatically.\n\nA method's own hyperparameters (`dmole methods --show NAME`) are "
    "set with --hparam KEY=VALUE.",
    TrainTaskOptions,
    Files(expert="expert", log="train_log.parquet"),
)
EVAL = Stage(
    "eval",
    "Evaluate on the test split of every task (seen and unseen), greedy decoding, each family's metric.",
    EvalOptions,
    Files(scores="scores.parquet", predictions="predictions/{task}.parquet"),
)
RESCORE = Stage(
    "rescore",
    "Score the predictions an evaluation stored under other graders and rules, without generating again, into "
    "a new version of its own (the eval's is left as it is); the report shows the rules side by side."
    "\n\nExample: dmole rescore --after T --rule strict --rule token-f1 --rule mcitlib (default: strict, "
    "normalised, numeric, token-f1; docs/metrics.md).",
    RescoreOptions,
    Files(scores="scores.parquet", samples="samples/{task}/{name}.parquet"),
    flags={"rules": "--rule"},
)
THRESHOLD_SWEEP = Stage(  # D-MoLE only: its routing is what the thresholds change
    "threshold-sweep",
    "D-MoLE threshold sensitivity: evaluate after --after once per comma-separated factor (e.g. "
    "0.5,0.75,1,1.5,2), into one threshold-sweep artifact that the report tabulates.",
    files=Files(table="sweep.parquet"),
    command=EVAL.name,
    switch="--threshold-scales",
)
ROUTE_TRAIN = Stage(
    "route-train",
    "Train RoE routers and skip adapters on every task's training data (3-stage "
    "schedule), then compare dense and routed accuracy and report the realised skip "
    "rate.",
    RouteTrainOptions,
    Files(weights="roe_weights.safetensors", config="roe_config.json", log="train_log.parquet"),
    flags={"start": "--from"},
)
ROE_EVAL = Stage(
    "roe-eval",
    "Evaluate the latest route-train weights: dense versus RoE, skip statistics (stage roe-eval).",
    RoEEvalOptions,
    # route-train's closing evaluation writes them too
    Files(decisions="routing_decisions.parquet", report="roe_report.json"),
    command=EVAL.name,
    switch="--roe",
)
ROE_SWEEP = Stage(
    "roe-sweep",
    "Train RoE at several skip targets (route-train's options, ρ per --target) and, at each RoE run's "
    "realised skip, static layer dropping and random routing with the same adapters and schedule, per "
    "--seed; report each task's score relative to the dense model, the realised skip and the batch-1 "
    "speed-up (stage roe-sweep).",
    RouteSweepOptions,
    Files(result="sweep.json", table="sweep.parquet", note="sweep.md"),
    command="route-sweep",
    flags={"skip_ratios": "--target", "seeds": "--seed", "baselines": "--baseline"},
)
SWEEP = Stage(
    "sweep",
    "Run a method's whole sequence at each value of one hyperparameter and select the value on the tasks' "
    "validation sets (`val` in the registry), never the test sets.\n\nEach value trains in a scratch "
    "workspace of its own; the artifact holds every value's test matrix and validation scores and the "
    "selected value (`dmole show sweep --task METHOD`). Example: dmole sweep --method lwf-lora --grid "
    "weight=0.1,1,10 (without --grid: the method's own, `dmole methods --show METHOD`); --hparam "
    "parity=true fixes a hyperparameter at every value.",
    SweepOptions,
    Files(result="sweep.json"),
)
REPEAT = Stage(
    "repeat",
    "Run a method's whole sequence under each --seed and each --order (every pair one run) and report every "
    "continual metric, and each task's final score, as mean ± std over the runs.\n\nEach run trains in a "
    "scratch workspace of its own, over the tasks in its order, with its seed in every stage that draws at random; "
    "a finished run is kept (by its configuration) and not run again when the command is repeated, with more seeds "
    "or orders too. The artifact holds every run's matrix and metrics (`dmole show repeat --task METHOD`); the "
    "report adds a Seeds and orders section. Example: dmole repeat --method dmole --seed 42 --seed 43 --order "
    "default --order reverse --order t3,t1,t2.",
    RepeatOptions,
    Files(result="repeat.json"),
    flags={"seeds": "--seed", "orders": "--order"},
)
GENERAL = Stage(
    "general",
    "General-ability retention: score the base model and the method's model after --after (default: the last "
    "task) on general lmms-eval benchmarks (MME, POPE, ...) through the lmms-eval plugin, into one artifact; the "
    "report sets them side by side (General ability: base against final).\n\nNeeds lmms-eval (dmole's lmms "
    "extra) and each task's data in the Hugging Face cache. Example: dmole general --lmms-task mme "
    "--lmms-task pope; --include-path DIR adds local task YAMLs, --limit N a quick look.",
    GeneralOptions,
    Files(result="general.json", replies="replies/{model}/{task}.parquet"),
    flags={"lmms_tasks": "--lmms-task"},
)
REPORT = Stage(
    "report",
    "Continual matrix R per method (zero-shot row + one row per stage) with Last, AVG (seen / "
    "all), BWT, FWT, and report.md with figures: expert allocation, expert activation, "
    "zero-cost sensitivity, RoE skipping.",
    files=Files(
        matrix="matrix.parquet",
        metrics="cl_metrics.json",
        costs="cost.json",
        figures="figures.json",
        markdown="report.md",
    ),
)

STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        EMBED,
        FIT_ROUTER,
        ZC_SCORE,
        ALLOCATE,
        TRAIN_TASK,
        EVAL,
        RESCORE,
        THRESHOLD_SWEEP,
        ROUTE_TRAIN,
        ROE_EVAL,
        ROE_SWEEP,
        SWEEP,
        REPEAT,
        GENERAL,
        REPORT,
    )
}


def with_options() -> dict[str, Stage]:
    """The stages that take options, by name (what the workspace's ``stages`` section may set)."""
    return {name: stage for name, stage in STAGES.items() if stage.options is not None}
