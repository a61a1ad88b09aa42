"""Scoring one task's replies by its metric family (dmole's grader) or by a named grader or rule
(stages/metrics/field_graders.py). No torch: `rescore` scores stored replies with it alone."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..config import TaskSpec
from ..data.prompts import render_prompt
from ..data.samples import EvalSample
from ..metrics.field_graders import caption_setting, rule_named, score_rule


@dataclass
class TaskScore:
    score: float
    per_sample: list[float]
    parsed: list[str | None]
    rule: str = ""  # the rule that scored the task (field_graders.RULES)
    tokenizer: str = ""  # the caption tokenizer that rule used ("" for a task that is no caption)
    notice: str | None = None  # one line on how it scored, when it fell back from java


def grading_samples(task: TaskSpec, samples: Sequence[EvalSample]) -> list[dict]:
    """Each sample as the rules read it: its references, its prompt fields, its image path and its whole prompt
    (MCITlib's Sci rule reads the image's name and the prompt)."""
    return [
        {**s.prompt_fields, "image": str(s.image), "prompt": render_prompt(task, s), **s.references} for s in samples
    ]


def score_predictions(
    task: TaskSpec,
    samples: Sequence[EvalSample],
    predictions: list[str],
    caption_tokenizer: str = "simple",
    grader: str = "dmole",
) -> TaskScore:
    """The task's score under ``grader``: a grader's rule for the task (dmole's: its metric family's), or a rule
    named. dmole's caption rule tokenizes with ``caption_tokenizer``; MCITlib's caption rule with PTB, in Python
    where java is missing (``caption_backends``), which ``notice`` then says."""
    rule = rule_named(grader, task.family, task.name)
    own = rule.startswith("dmole-")
    score, per_sample, parsed = score_rule(
        rule, predictions, grading_samples(task, samples), tokenizer=caption_tokenizer if own else None
    )
    return TaskScore(score, per_sample, parsed, rule, *caption_setting(rule, caption_tokenizer))
