"""Render a task's evaluation prompt for one sample.

The template's fields are the sample's prompt fields: ``{question}`` (or ``{text}``, the whole prompt in LLaVA's
and CoIN's question files), ``{choices}`` (lettered lines "A. ...", one per option), ``{sent}`` and
``{knowledge}`` (grounding; the reference's SK-VG prompt starts "Based on the knowledge {knowledge}."). Values
are inserted as they are: braces inside a question or a knowledge text are not template syntax. The embedding
stage routes on the same rendered text.
"""

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
        hint = (
            " (its 'text' is the whole prompt, as LLaVA and CoIN question files write it: set the task's "
            'prompt to "{text}")'
            if "text" in fields
            else ""
        )
        raise DataError(
            task.eval,
            f"task {task.name!r}: its prompt needs field {missing} which sample {sample.id!r} does not have{hint}",
            field="prompt",
        ) from None
    except (IndexError, ValueError) as error:  # "{}" or a stray brace: name the fields a template may use
        raise DataError(
            task.eval,
            f"task {task.name!r}: the prompt is not a valid template ({error}); use named "
            "fields such as {question}, {choices}, {sent}, {knowledge} and double literal braces",
            field="prompt",
        ) from None
