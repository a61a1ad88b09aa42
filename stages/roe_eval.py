"""Stage `roe-eval` (`dmole eval --roe`): dense versus RoE-routed accuracy and the realised skip statistics on
every task's test split, for the latest route-train weights; and `roe_summary` for `dmole show route-train`.

The same evaluation (`evaluate_dense`, `evaluate_routed`, `write_results`) closes `route-train`.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence

from artifacts import Version, Writer
from artifacts.io import read_json, write_json, write_parquet

from .config import TaskSpec
from .data.samples import EvalSample
from .data.tasks import load_eval_samples
from .distributed import merge_records
from .options import RoEEvalOptions, stage_options
from .progress import Progress, silent
from .project import Project
from .runner import StageResult, model_fingerprint, run_stage

STAGE = "roe-eval"
TASK = "all"
TRAIN_STAGE = "route-train"
WEIGHTS, CONFIG, BACKBONE = "roe_weights.safetensors", "roe_config.json", "backbone.safetensors"
DECISIONS, REPORT = "routing_decisions.parquet", "roe_report.json"
SKIP_TOLERANCE, MAX_SCORE_DROP = 0.05, 2.0  # dmole's acceptance targets (spec roe.md §6.4)

EvalSets = list[tuple[TaskSpec, list[EvalSample]]]


def base_hash(model_prints: dict[str, str]) -> str:
    """One hash of the base model folder's fingerprints (weights, config, tokenizer)."""
    return hashlib.sha256(json.dumps(model_prints, sort_keys=True).encode()).hexdigest()


def eval_sets(project: Project, max_samples: int | None) -> EvalSets:
    """Every task's test samples, validated before any model work."""
    return [(task, load_eval_samples(project.data_root, task)[:max_samples]) for task in project.config.tasks]


def evaluate_dense(adapter, sets: EvalSets, batch_size: int, progress: Progress = silent,
                   label: str = "dense") -> dict[str, float]:
    """Task scores with every layer executed (no routing plan active)."""
    from .evaluation.predict import predict, score_predictions

    return {task.name: score_predictions(task, samples, predict(
        adapter, task, samples, batch_size=batch_size, progress=progress,
        description=f"{label} {task.name}")).score for task, samples in sets}


def evaluate_routed(adapter, attachment, sets: EvalSets, batch_size: int, batch_rule: str, run_id: str,
                    progress: Progress = silent) -> tuple[dict[str, float], list[dict]]:
    """Task scores with RoE routing, and one decision row per (example, layer)."""
    from .evaluation.predict import predict, score_predictions
    from .roe.inference import RequestRecorder, decision_rows

    scores, rows = {}, []
    for task, samples in sets:
        recorder = RequestRecorder(batch_rule)
        predictions = predict(adapter, task, samples, batch_size=batch_size, around_batch=recorder,
                              progress=progress, description=f"roe {task.name}")
        scores[task.name] = score_predictions(task, samples, predictions).score
        rows += merge_records(decision_rows(recorder, attachment, run_id=run_id, benchmark=task.name,
                                            example_ids=[s.id for s in samples]))  # the recorder saw this process's batches
    return scores, rows


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _skip_stats(rows: Sequence[dict], n_layers: int) -> dict:
    routable = [r for r in rows if r["routable"]]
    per_layer = [[r["applied_skip"] for r in rows if r["layer"] == l] for l in range(n_layers)]
    per_example = Counter()
    for r in routable:
        per_example[(r["benchmark"], r["example_id"])] += r["applied_skip"]
    return {"skip_rate": _mean([r["applied_skip"] for r in routable]),
            "decided_skip_rate": _mean([r["decided_skip"] for r in routable]),
            "skip_rate_all_layers": _mean([r["applied_skip"] for r in rows]),
            "skip_rate_per_layer": [_mean(v) for v in per_layer],
            "skipped_layers_histogram": {str(k): v for k, v in sorted(Counter(per_example.values()).items())},
            "n_prompt_tokens_mean": _mean([r["n_prompt_tokens"] for r in rows if r["layer"] == 0])}


def build_report(adapter, attachment, rows: list[dict], scores: dict[str, dict[str, float]], *, rho: float,
                 batch_rule: str) -> dict:
    """``scores`` per run and task: ``base`` (the untouched base model), ``dense`` (the same model without
    skipping: the dense twin when stage 2 tuned the backbone, else the base itself), ``forced`` (the RoE
    weights with every layer executed, when the backbone was tuned) and ``roe`` (routed)."""
    from .roe.cost import theoretical_saving

    scores = {"dense": scores["base"]} | scores
    shape = attachment.modules.shape
    overall = _skip_stats(rows, shape.n_layers)
    per_task = {}
    for task in scores["roe"]:
        stats = _skip_stats([r for r in rows if r["benchmark"] == task], shape.n_layers)
        per_task[task] = {f"{run}_score": by_task[task] for run, by_task in scores.items()} | {
            "skip_rate": stats["skip_rate"], "skip_rate_per_layer": stats["skip_rate_per_layer"]}
    averages = {f"{run}_score": _mean(list(by_task.values())) for run, by_task in scores.items()}
    drop = averages["dense_score"] - averages["roe_score"]
    applied = {r["batch_rule"] for r in rows}
    return {
        "rho": rho, **overall, **averages, "score_drop": drop,
        "dense_reference": "dense twin" if "forced" in scores else "base", "per_task": per_task,
        "routable_layers": list(shape.routable), "batch_rule": batch_rule,
        "batch_rule_applied": "or" if "or" in applied else batch_rule,
        "theoretical_saving": theoretical_saving(adapter.model.config.text_config, shape.rank,
                                                 overall["skip_rate_all_layers"], overall["n_prompt_tokens_mean"]),
        "targets": {"skip_within_5_points": abs(overall["skip_rate"] - rho) <= SKIP_TOLERANCE,
                    "score_drop_at_most_2": drop <= MAX_SCORE_DROP},
    }


def write_results(writer: Writer, rows: list[dict], report: dict) -> None:
    write_parquet(writer.path(DECISIONS), {k: [r[k] for r in rows] for k in rows[0]})
    write_json(writer.path(REPORT), report)
    writer.meta.update({key: report[key] for key in ("skip_rate", "base_score", "dense_score", "roe_score",
                                                     "batch_rule_applied")})


def evaluate_roe(project: Project, options: RoEEvalOptions | dict | None = None, *, force: bool = False,
                 progress: Progress = silent) -> StageResult:
    options = stage_options(project.config, STAGE, options)
    trained = project.store.require(TRAIN_STAGE, TASK, hint="dmole route-train")
    train_config = read_json(trained.file(CONFIG))
    batch_rule = options.batch_rule or train_config["batch_rule"]
    expected_hash = base_hash(model_fingerprint(project))
    sets = eval_sets(project, options.max_samples)
    config = {"options": options.model_dump(), "tasks": [t.model_dump() for t, _ in sets], "base_hash": expected_hash}

    def compute(writer: Writer) -> None:
        import torch
        from safetensors.torch import load_file

        from .roe.attach import attach
        from .roe.weights import load_roe

        adapter = project.load_model()
        modules, _ = load_roe(trained.file(WEIGHTS), family=adapter.family, base_hash=expected_hash)
        scores = {"base": evaluate_dense(adapter, sets, options.batch_size, progress, label="base")}
        if train_config["stage2_mode"] == "full":
            # The dense twin's weights are not kept: its scores come from route-train's own evaluation.
            trained_report = read_json(trained.file(REPORT))["per_task"]
            scores["dense"] = {task.name: trained_report[task.name]["dense_score"] for task, _ in sets}
            with torch.no_grad():
                adapter.model.load_state_dict(load_file(str(trained.file(BACKBONE))), strict=False)
            scores["forced"] = evaluate_dense(adapter, sets, options.batch_size, progress, label="forced-execute")
        attachment = attach(adapter, modules)
        scores["roe"], rows = evaluate_routed(adapter, attachment, sets, options.batch_size, batch_rule,
                                              run_id=f"{TRAIN_STAGE}-v{trained.number}", progress=progress)
        write_results(writer, rows, build_report(adapter, attachment, rows, scores, rho=train_config["rho"],
                                                 batch_rule=batch_rule))

    return run_stage(project, STAGE, TASK, config=config, inputs=[trained], compute=compute, force=force)


def _current_eval(project: Project, trained: Version) -> Version | None:
    latest = project.store.latest(STAGE, TASK)
    if latest is None or not any(i["stage"] == TRAIN_STAGE and i["version"] == trained.number
                                 for i in latest.manifest["inputs"]):
        return None
    return latest


def roe_summary(project: Project) -> dict:
    """The RoE figures of the latest route-train weights: from their roe-eval if there is one, else from
    route-train's own closing evaluation."""
    trained = project.store.require(TRAIN_STAGE, TASK, hint="dmole route-train")
    source = _current_eval(project, trained) or trained
    report = read_json(source.file(REPORT))
    return {"source": f"{source.stage} v{source.number}", **report}
