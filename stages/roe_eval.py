"""Stage `roe-eval` (`dmole eval --roe`): dense versus RoE-routed accuracy and the realised skip statistics on
every task's test split, for the latest route-train weights; and `roe_summary` for `dmole show route-train`.

The evaluation itself (stages/roe/evaluation.py) also closes `route-train`.
"""

from __future__ import annotations

from dmole.artifacts import Writer
from dmole.artifacts.io import read_json

from .options import RoEEvalOptions, hashed
from .progress import Progress, silent
from .project import Project
from .registry import ROE_EVAL, ROUTE_TRAIN
from .resolve import stage_options
from .roe.evaluation import (
    TASK,
    TrainedRoE,
    base_hash,
    build_report,
    continual_matrix,
    eval_sets,
    evaluate_dense,
    evaluate_routed,
    evaluated_by,
    write_results,
)
from .runner import StageResult, model_fingerprint, run_stage


def evaluate_roe(
    project: Project, options: RoEEvalOptions | dict | None = None, *, force: bool = False, progress: Progress = silent
) -> StageResult:
    options = stage_options(project.config, ROE_EVAL.name, options)
    trained = TrainedRoE.latest(project)
    batch_rule = options.batch_rule or trained.config["batch_rule"]
    sets = eval_sets(project, options.max_samples)
    config = {
        "options": options.model_dump(),
        "tasks": [hashed(t) for t, _ in sets],
        "base_hash": base_hash(model_fingerprint(project)),
    }

    def compute(writer: Writer) -> None:
        from .roe.attach import attach
        from .roe.backbone import load_stage2, tuned

        adapter = project.load_model()
        modules, continual = trained.open(project, adapter)
        reference, mode = trained.reference(project), trained.config["stage2_mode"]
        scores = {
            "base": evaluate_dense(adapter, sets, options.batch_size, progress, label=reference, continual=continual)
        }
        if tuned(mode):
            # The dense twin's weights are not kept: its scores come from route-train's own evaluation.
            trained_report = read_json(trained.version.file(ROE_EVAL.files.report))["per_task"]
            scores["dense"] = {task.name: trained_report[task.name]["dense_score"] for task, _ in sets}
            load_stage2(trained.version.file, adapter, mode)
            scores["forced"] = evaluate_dense(adapter, sets, options.batch_size, progress, label="forced-execute")
        attachment = attach(adapter, modules)
        scores["roe"], rows = evaluate_routed(
            adapter,
            attachment,
            sets,
            options.batch_size,
            batch_rule,
            run_id=f"{ROUTE_TRAIN.name}-v{trained.version.number}",
            progress=progress,
            continual=continual,
        )
        write_results(
            writer,
            rows,
            build_report(
                adapter,
                attachment,
                rows,
                scores,
                rho=trained.config["rho"],
                batch_rule=batch_rule,
                reference=reference,
                continual=continual_matrix(project, trained.after),
            ),
        )

    return run_stage(
        project,
        ROE_EVAL.name,
        TASK,
        config=config,
        inputs=[trained.version, *trained.continual_versions],
        compute=compute,
        force=force,
    )


def roe_summary(project: Project) -> dict:
    """The RoE figures of the latest route-train weights: from their roe-eval if there is one, else from
    route-train's own closing evaluation."""
    trained = project.store.require(ROUTE_TRAIN.name, TASK, hint=ROUTE_TRAIN.hint())
    source = evaluated_by(project, trained)
    report = read_json(source.file(ROE_EVAL.files.report))
    return {"source": f"{source.stage} v{source.number}", **report}
