"""Workspace-level commands: `init`, `tasks`, `synth`, `demo`, `report`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, get_args

import typer

from dmole.stages.config import SEED_LIMIT, ImageAspectRatio, Profile, WorkspaceConfig
from dmole.stages.data.benchmarks import benchmark_list
from dmole.stages.method_groups import DEMO_METHODS
from dmole.stages.models.catalog import family_list
from dmole.stages.registry import REPORT

from .common import (
    FamilyOption,
    JsonOption,
    QuietOption,
    WorkspaceOption,
    console,
    default_workspace,
    handles_user_errors,
    open_project,
    print_summary,
)
from .options_cli import choices

SEED_MAX = SEED_LIMIT - 1  # the synthetic benchmark's seed, in the range of every stage's (dmole.stages.config.Seed)
AspectRatios = choices("image_aspect_ratio", get_args(ImageAspectRatio))
Profiles = choices("profile", get_args(Profile))


def workspace_default(name: str):
    """A workspace setting's default (stages/config.py), for `init`'s flag of it."""
    return WorkspaceConfig.model_fields[name].default


@handles_user_errors
def init(
    model: Annotated[
        Path,
        typer.Option(
            help="Local Hugging Face model folder (model and processor, as "
            f"save_pretrained writes it) of a supported family: {family_list()}."
        ),
    ],
    data: Annotated[
        Path,
        typer.Option(
            help="Data root in the D-MoLE layout, with a tasks.json registry; with "
            "--benchmark, the folder its paths start from (--benchmark names it)."
        ),
    ],
    tasks: Annotated[
        str | None,
        typer.Option(help="Comma-separated task sequence (default: the registry's or the benchmark's, in order)."),
    ] = None,
    registry: Annotated[
        Path | None, typer.Option(help="Task registry file (default: DATA/tasks.json). Not with --benchmark.")
    ] = None,
    benchmark: Annotated[
        str | None,
        typer.Option(
            help=f"Use a built-in benchmark preset instead of a registry file ({benchmark_list()}). Its tasks, files, "
            "prompts, generation limits, epochs, global batch sizes and repeats are the official ones; "
            "see docs/data.md."
        ),
    ] = None,
    method: Annotated[
        str, typer.Option(help="Default method of the stages (`dmole methods` lists them).")
    ] = workspace_default("method"),
    seed: Annotated[int, typer.Option(help="Seed recorded for every stage.")] = workspace_default("seed"),
    max_tiles: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Cap on the image tiles per image (InternVL dynamic tiles, LLaVA-NeXT/OneVision grid, "
            "SmolVLM splits, Qwen pixels in whole-image views) [default: the processor's own].",
        ),
    ] = None,
    image_aspect_ratio: Annotated[
        AspectRatios,
        typer.Option(
            help="processor (the image processor's own resizing) or pad (each image centred on a square of the "
            "processor's mean colour first, as LLaVA-1.5 and RoE's --image_aspect_ratio pad)."
        ),
    ] = AspectRatios(workspace_default("image_aspect_ratio")),
    profile: Annotated[
        Profiles,
        typer.Option(
            help="dmole (its own defaults) or reference (every deliberate difference from the official D-MoLE code "
            "switched back: batch-vote routing, length grouping, the reference's router fit set)."
        ),
    ] = Profiles(workspace_default("profile")),
    overwrite: Annotated[bool, typer.Option(help="Replace an existing workspace.json.")] = False,
    workspace: WorkspaceOption = None,
) -> None:
    """Write workspace.json: the model, the data root, the ordered task registry and defaults.

    The model folder is checked first: a supported model type, a processor that loads, a chat template.

    The tasks come from a tasks.json registry or from a benchmark preset (ARCHIVE holds the archive's data/):
    [bold]dmole init --benchmark dmole --model M --data ARCHIVE[/] is the official D-MoLE 9-task benchmark;
    [bold]--benchmark ucit[/] and [bold]--benchmark mllm-dcl[/] read MCITlib's layout (DATA holds UCIT/, Domain_data/).

    An InternVL2 / InternVL2.5 remote-code folder is converted once with [bold]dmole convert[/]."""
    from dmole.stages.init import create_workspace

    root = default_workspace(workspace)
    names = [name.strip() for name in tasks.split(",") if name.strip()] if tasks else None
    config = create_workspace(
        root,
        model=model,
        data=data,
        tasks=names,
        registry=registry,
        benchmark=benchmark,
        method=method,
        seed=seed,
        max_tiles=max_tiles,
        image_aspect_ratio=image_aspect_ratio.value,
        profile=profile.value,
        overwrite=overwrite,
    )
    console.print(
        f"init: wrote {root / 'workspace.json'} with {len(config.tasks)} tasks: {', '.join(config.task_names)}",
        soft_wrap=True,
    )


@handles_user_errors
def tasks(workspace: WorkspaceOption = None) -> None:
    """Print the task sequence, one name per line (for shell loops: `for t in $(dmole tasks)`)."""
    for name in open_project(workspace).config.task_names:
        print(name)


@handles_user_errors
def synth(
    out: Annotated[Path, typer.Option(help="Folder for the benchmark, the tiny base model and the workspace.")] = Path(
        "dmole-synth"
    ),
    family: FamilyOption = "llava",
    seed: Annotated[int, typer.Option(min=0, max=SEED_MAX, help="Seed of the data and of the base model.")] = 0,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Regenerate even if the folder already holds a benchmark (of this recipe or another), replacing its "
            "data, base model and workspace with every artifact in it. Without it, a folder that holds another "
            "recipe's benchmark is refused.",
        ),
    ] = False,
    lm_layers: Annotated[
        int | None,
        typer.Option(
            min=2,
            help="Language-model layers of the base (default 8; e.g. 24 for a RoE testbed as deep as real models).",
        ),
    ] = None,
    lm_hidden: Annotated[
        int | None, typer.Option(min=16, help="Language-model width D of the base (default 128; the MLP is 2·D wide).")
    ] = None,
    quiet: QuietOption = False,
) -> None:
    """Generate the synthetic benchmark (5 tasks, every metric family), pre-train its tiny base model, and
    write a ready workspace at OUT/workspace."""
    from dmole.stages.synth import synthesize, tiny_size

    from .progress import rich_progress

    result = synthesize(
        out,
        family=family,
        seed=seed,
        force=force,
        progress=rich_progress(quiet),
        tiny=tiny_size(lm_layers=lm_layers, lm_hidden=lm_hidden),
    )  # the defaults when neither is given
    console.print(result.summary(), soft_wrap=True)


@handles_user_errors
def demo(
    out: Annotated[
        Path, typer.Option(help="Folder for the benchmark, model and workspace (reused if present).")
    ] = Path("dmole-demo"),
    methods: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated methods to run (`dmole methods`) or groups: 'table2' for the nine methods of the "
            "paper's Table 2, 'recent' for those 2026's tables add. "
            f"\\[default: {','.join(DEMO_METHODS)}]"
        ),
    ] = None,
    family: FamilyOption = "llava",
    seed: Annotated[int, typer.Option(min=0, max=SEED_MAX, help="Seed of the synthetic data and base model.")] = 0,
    quiet: QuietOption = False,
) -> None:
    """The whole method on the synthetic benchmark: D-MoLE and seq-lora (or --methods) over every task,
    then Table 2 (each task's final score, AVG, Last, BWT per method) and a markdown report. Resumes where it
    stopped."""
    from dmole.stages.demo import demo as run
    from dmole.stages.demo import demo_methods

    from .progress import rich_progress
    from .reporting import print_method_table

    def show(result) -> None:
        if not quiet or not result.up_to_date:
            print_summary(result)

    chosen = demo_methods(methods) if methods else DEMO_METHODS
    outcome = run(
        out,
        methods=chosen,
        family=family,
        seed=seed,
        on_synth=lambda r: console.print(r.summary(), soft_wrap=True),
        on_result=show,
        progress=rich_progress(quiet),
    )
    print_method_table(outcome.report.version)
    console.print(
        f"demo: finished in {outcome.seconds:.0f}s; report at "
        f"{outcome.report.version.path / 'report.md'}; workspace {outcome.workspace}",
        soft_wrap=True,
    )


@handles_user_errors
def report(
    out: Annotated[Path | None, typer.Option(help="Also copy report.md and its PNG figures into this folder.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Rewrite the report even if nothing changed.")] = False,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
    workspace: WorkspaceOption = None,
) -> None:
    """Continual matrix R per method (zero-shot row + one row per stage) with Last, AVG (seen / all), BWT, FWT,
    and report.md with figures: expert allocation, expert activation, zero-cost sensitivity, RoE skipping."""
    from dmole.artifacts.io import read_json
    from dmole.stages.config import check_creatable
    from dmole.stages.report import export, figure_names
    from dmole.stages.report import report as run

    from .reporting import print_method_table, print_report_files

    if out:
        check_creatable(out, "--out")  # before the report is computed
    result = run(open_project(workspace), force=force)
    if out:
        export(result.version, out)
    folder, figures = out or result.version.path, figure_names(result.version)
    if json_output:
        metrics = read_json(result.version.file(REPORT.files.metrics))
        print(
            json.dumps(
                {
                    **metrics,
                    "cost": read_json(result.version.file(REPORT.files.costs)),
                    "report": str(folder / REPORT.files.markdown),
                    "figures": [str(folder / name) for name in figures],
                },
                indent=2,
            )
        )
        return
    if not quiet:
        print_method_table(result.version)
    print_report_files(folder, figures)
    print_summary(result)


def register(app: typer.Typer) -> None:
    app.command()(init)
    app.command()(tasks)
    app.command()(synth)
    app.command()(demo)
    app.command()(report)
