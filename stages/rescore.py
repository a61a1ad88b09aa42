"""Stage `rescore`: the replies an evaluation stored, scored again under other graders and rules (docs/metrics.md).

Nothing is generated: each task's ``predictions/{task}.parquet`` of the latest evaluation after ``after`` (of the
method, or ``zero-shot``) is read, and the task's samples from its data, which must still be the evaluation set the
replies were scored against. Each name in ``rules`` is a grader (its rule for the task, as ``eval --grader`` picks
it) or a rule. Where a rule cannot grade a task (a text rule on grounding boxes, CoIN's grader on captions), its
cell is empty, with the reason in the table and in one warning line. The result is a new ``rescore`` version whose
input is that evaluation; the evaluation's own version is left as it is.
"""

from __future__ import annotations

from dmole.artifacts import Version, Writer
from dmole.artifacts.io import read_parquet, write_parquet

from .data.tasks import eval_set_hash, load_eval_samples
from .errors import UserError
from .evaluation.grading import score_predictions
from .methods import get_method
from .methods.base import ZERO_SHOT, method_flag
from .metrics import MetricError
from .options import RescoreOptions, hashed
from .project import Project
from .registry import EVAL, RESCORE
from .resolve import stage_options
from .runner import StageResult, run_stage


def rescore(
    project: Project, after: str, options: RescoreOptions | dict | None = None, *, force: bool = False
) -> StageResult:
    """Score the predictions of the evaluation after ``after`` (or ``zero-shot``) under each of ``options.rules``;
    ``options`` (what the caller sets) go over the workspace's defaults."""
    options = stage_options(project.config, RESCORE.name, options)
    zero_shot = after == ZERO_SHOT
    method = get_method(options.method or project.config.method)
    if not zero_shot:
        method.check_after(project, after)
    options = options.model_copy(update={"method": None if zero_shot else method.name})
    evaluation = project.store.require(
        EVAL.name if zero_shot else method.stage(EVAL.name),
        after,
        hint="dmole eval " + ("--zero-shot" if zero_shot else f"--after {after}{method_flag(method.name)}"),
    )

    def compute(writer: Writer) -> None:
        rows, warnings = [], []
        for task, samples, predictions in _stored(project, evaluation):
            for name in options.rules:
                row = {"task": task.name, "family": task.family, "name": name, "n": len(samples)}
                try:
                    result = score_predictions(task, samples, predictions, _caption_tokenizer(evaluation), name)
                except MetricError as error:
                    rows.append({**row, "rule": "", "score": None, "tokenizer": "", "note": str(error)})
                    warnings.append(f"{name} does not score {task.name}: {error}")
                    continue
                rows.append(
                    {**row, "rule": result.rule, "score": result.score, "tokenizer": result.tokenizer, "note": ""}
                )
                warnings.append(result.notice)
                write_parquet(
                    writer.path(RESCORE.files.samples.format(task=task.name, name=name)),
                    {
                        "sample_id": [s.id for s in samples],
                        "prediction": predictions,
                        "parsed": [None if p is None else str(p) for p in result.parsed],
                        "score": result.per_sample,
                    },
                )
        if all(row["score"] is None for row in rows):
            raise UserError(f"none of {', '.join(options.rules)} scores any task of {evaluation}: {rows[0]['note']}")
        write_parquet(writer.path(RESCORE.files.scores), {key: [row[key] for row in rows] for key in rows[0]})
        writer.meta.update(
            {f"{row['task']}@{row['name']}": round(row["score"], 3) for row in rows if row["score"] is not None}
        )
        writer.meta["evaluation"] = str(evaluation)
        writer.meta["warnings"] = list(dict.fromkeys(w for w in warnings if w))

    stage = RESCORE.name if zero_shot else method.stage(RESCORE.name)
    return run_stage(
        project, stage, after, config={"options": hashed(options)}, inputs=[evaluation], compute=compute, force=force
    )


def _caption_tokenizer(evaluation: Version) -> str:
    """The caption tokenizer dmole's caption rule scored the evaluation with (its recorded options)."""
    return evaluation.manifest["config"]["options"]["caption_tokenizer"]


def _stored(project: Project, evaluation: Version):
    """(task, its evaluation samples, the stored replies) for each task the evaluation scored, in its order; one
    UserError when a task's evaluation set changed since (the replies would be scored against other answers)."""
    for row in read_parquet(evaluation.file(EVAL.files.scores)).to_pylist():
        task = project.config.task(row["task"])
        if eval_set_hash(project.data_root, task) != row["eval_set_sha256"]:
            raise UserError(
                f"task {task.name}'s evaluation files changed since {evaluation} scored them; evaluate again "
                f"before re-scoring"
            )
        stored = read_parquet(evaluation.file(EVAL.files.predictions.format(task=task.name))).to_pylist()
        samples = load_eval_samples(project.data_root, task)
        if [s.id for s in samples] != [r["sample_id"] for r in stored]:
            raise UserError(f"{evaluation} holds other samples of {task.name} than its data; evaluate it again")
        yield task, samples, [r["prediction"] for r in stored]
