"""Render a task's evaluation prompt for one sample."""

from __future__ import annotations

from ..config import TaskSpec
from ..metrics.choice import format_choices
from .errors import DataError
from .samples import EvalSample


def render_prompt(task: TaskSpec, sample: EvalSample) -> str:
    fields = dict(sample.prompt_fields)
    if "choices" in fields:
        fields["choices"] = format_choices(fields["choices"])
    try:
        return task.eval_prompt.format_map(fields)
    except KeyError as missing:
        raise DataError(task.eval, f"task {task.name!r}: its prompt needs field {missing} which sample "
                        f"{sample.id!r} does not have", field="prompt") from None
