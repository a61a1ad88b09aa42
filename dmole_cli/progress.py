"""Rich progress bars (rate, remaining time, live status such as the loss) behind the stages' Progress protocol."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from .common import err_console, launched_worker


class _Rate(ProgressColumn):
    """Items per second, once rich has measured a speed."""

    def render(self, task) -> Text:
        return Text(f"{task.speed:.1f}/s" if task.speed else "", style="progress.data.speed")


class _Bar:
    def __init__(self, progress: Progress, task_id):
        self.progress, self.task_id = progress, task_id

    def advance(self, steps: int = 1, **status: object) -> None:
        text = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in status.items())
        self.progress.update(self.task_id, advance=steps, status=text)


def rich_progress(quiet: bool = False):
    """A Progress factory for stage functions; ``quiet``, any launched process but the first, and a stderr that is
    no terminal (a pipe, a log file: rich would draw nothing there but a stray blank line) get the stages' silent
    one."""
    if quiet or launched_worker() or not err_console.is_terminal:
        from dmole.stages.progress import silent

        return silent

    @contextmanager
    def factory(description: str, total: int) -> Iterator[_Bar]:
        columns = (
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            _Rate(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}", markup=False),
        )
        with Progress(*columns, console=err_console, transient=True) as progress:
            yield _Bar(progress, progress.add_task(description, total=total, status=""))

    return factory
