"""What every command shares: the workspace option, the console, and turning user errors into one line."""

from __future__ import annotations

import errno
import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperGroup

try:  # typer >= 0.22 carries its own copy of click
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
except ImportError:
    from click.exceptions import ClickException, NoArgsIsHelpError, UsageError


def launched_worker() -> bool:
    """True in every process but the first when a launcher (accelerate launch, torchrun) started several."""
    return int(os.environ.get("RANK", "0")) > 0


# Under a launcher only the first process prints results and progress; every process still reports errors.
# No markup: what is printed holds paths, names and messages whose brackets rich would read as its tags; a style
# is given as a style (labelled, Text), never written into the string.
console = Console(highlight=False, markup=False, quiet=launched_worker())
err_console = Console(stderr=True, highlight=False, markup=False)

WorkspaceOption = Annotated[
    Path,
    typer.Option(
        "--workspace",
        "-w",
        envvar="DMOLE_WORKSPACE",
        show_default="current folder",
        help="Workspace folder (holds workspace.json and the artifacts), or its workspace.json.",
    ),
]
ForceOption = Annotated[bool, typer.Option("--force", help="Recompute even if the latest version is up to date.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars; only the summary line.")]
FamilyOption = Annotated[str, typer.Option(help="Model family of the tiny base: llava, internvl or qwen2vl.")]


def default_workspace(path: Path | None) -> Path:
    """The folder named by --workspace / DMOLE_WORKSPACE (or by its workspace.json), else the current folder."""
    from dmole.stages.project import workspace_root

    return workspace_root((path or Path(os.getcwd())).expanduser())


def open_project(workspace: Path | None):
    """The workspace named by --workspace / DMOLE_WORKSPACE, or the current folder."""
    from dmole.stages.project import Project

    return Project.open(default_workspace(workspace))


def user_errors() -> tuple[type[Exception], ...]:
    """Errors that mean bad input, not a bug. Imported lazily so `dmole --help` stays fast."""
    from dmole.artifacts import ArtifactError
    from dmole.stages.errors import UserError

    return UserError, ArtifactError


def labelled(label: str, style: str, message: str) -> Text:
    """``label`` in ``style``, then ``message`` as it is."""
    return Text.assemble((label, style), " ", message)


def print_error(message: str) -> None:
    err_console.print(labelled("error:", "bold red", message), soft_wrap=True)


def refusal(error: OSError) -> str | None:
    """What the file system refused and on which paths (two for a rename or a copy). None for an error that names
    no path and is no full disk (a failed write names none): that is a bug, shown with its traceback."""
    paths = " -> ".join(str(p) for p in (error.filename, error.filename2) if p is not None)
    if not paths and error.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    return f"{paths}: {error.strerror or error}" if paths else str(error.strerror)


def handles_user_errors(command: Callable) -> Callable:
    """Print a user error as one red line on stderr and exit with status 2, and the file system's refusal of a path
    (a folder that cannot be made, a full disk, a denied permission) as one line with status 1; tracebacks are
    for bugs."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except Exception as error:
            if isinstance(error, user_errors()):
                print_error(str(error))
                raise typer.Exit(2) from None
            if isinstance(error, OSError) and (line := refusal(error)) is not None:
                print_error(line)
                raise typer.Exit(1) from None
            raise

    return wrapper


def usage_line(error: UsageError) -> str:
    """A usage error (an unknown option, a missing argument, a value outside an option's choices) as one line:
    click's own message, which names the option and what it takes, and where the help is."""
    message = " ".join(error.format_message().replace("Value error, ", "").split())
    where = f" (see '{error.ctx.command_path} --help')" if error.ctx is not None else ""
    return f"{message}{where}"


class OneLineErrors(TyperGroup):
    """The app's group: a usage error is one red line on stderr, exit status 2, instead of typer's usage box."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            # not standalone, click raises the usage error here instead of printing its box; a command's
            # typer.Exit comes back as its status, a command that returns as None
            status = super().main(*args, standalone_mode=False, **kwargs)
        except NoArgsIsHelpError as error:
            sys.exit(error.exit_code)  # the help is already printed
        except UsageError as error:
            print_error(usage_line(error))
            sys.exit(error.exit_code)
        except ClickException as error:
            error.show()
            sys.exit(error.exit_code)
        except typer.Abort:
            err_console.print("Aborted.")
            sys.exit(1)
        sys.exit(status if isinstance(status, int) else 0)


def print_result(result, json_output: bool) -> None:
    """What a stage command ends with: its summary line, or under --json its result as JSON."""
    if json_output:
        print(json.dumps(result.as_json(), indent=2))
    else:
        print_summary(result)


def print_summary(result) -> None:
    """The one line every stage ends with, after the stage's warnings (one line each)."""
    for warning in result.warnings:
        err_console.print(labelled("warning:", "bold yellow", warning), soft_wrap=True)
    console.print(result.summary(), style="dim" if result.up_to_date else "green", soft_wrap=True)
