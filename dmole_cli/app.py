"""The `dmole` command: one Typer app mapping sub-commands to plain stage functions.

Heavy libraries (torch, transformers, peft) are imported inside command bodies so that
`dmole --help` answers at once.
"""

from __future__ import annotations

import warnings

import typer

from . import convert_cmd, data_cmds, inspect_cmds, method_cmds, roe_cmds, stage_cmds, workspace_cmds
from .common import OneLineErrors

app = typer.Typer(
    name="dmole",
    cls=OneLineErrors,
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    help="Continual multimodal instruction tuning (D-MoLE) and learned layer skipping (RoE), as resumable "
    "stages over versioned artifacts.\n\nStart with [bold]dmole demo[/], or [bold]dmole synth[/] / "
    "[bold]dmole init[/] and then loop over [bold]dmole tasks[/].",
)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"dmole {version('dmole')}")
        raise typer.Exit()


@app.callback()
def _options(
    _version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """The options of `dmole` itself, before the command."""


workspace_cmds.register(app)
stage_cmds.register(app)
roe_cmds.register(app)
inspect_cmds.register(app)
method_cmds.register(app)
convert_cmd.register(app)
data_cmds.register(app)


def main() -> None:
    # peft 0.21 calls a transformers method that 5.x deprecates; users can do nothing about it.
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    app()
