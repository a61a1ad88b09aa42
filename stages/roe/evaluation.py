"""RoE's evaluation and its artifacts, shared by `route-train` (its closing evaluation), `eval --roe`, the report
and the lmms-eval plugin: the artifact names, dense and routed scoring (on the base or a continual model), the
report, and the latest trained weights with what they were trained on.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dmole.artifacts import Version, Writer
from dmole.artifacts.io import read_json, read_parquet, write_json, write_parquet

from ..config import TaskSpec
from ..data.samples import EvalSample
from ..data.tasks import load_eval_samples
from ..distributed import merge_records
from ..errors import UserError
from ..methods import get_method
from ..progress import Progress, silent
from ..project import Project
from ..registry import EVAL, ROE_EVAL, ROUTE_TRAIN
from ..runner import model_fingerprint
from .continual import BASE, continual_inputs, load_continual, trained_on

if TYPE_CHECKING:
    from .fixed import FixedRouting

TASK = "all"
SKIP_TOLERANCE, MAX_SCORE_DROP = 0.05, 2.0  # dmole's acceptance targets (spec roe.md §6.4)

EvalSets = list[tuple[TaskSpec, list[EvalSample]]]


def base_hash(model_prints: dict[str, str]) -> str:
    """One hash of the base model folder's fingerprints (weights, config, tokenizer)."""
    return hashlib.sha256(json.dumps(model_prints, sort_keys=True).encode()).hexdigest()


def continual_hash(inputs: Sequence[Version]) -> str:
    """One hash of the artifacts a continual model is built from ("" for the base model), kept in the RoE
    weights' metadata: RoE trained on other experts is stale."""
    if not inputs:
        return ""
    return hashlib.sha256(json.dumps(sorted(str(v.ref) for v in inputs)).encode()).hexdigest()


def continual_matrix(project: Project, after: str | None) -> dict | None:
    """For RoE on a continual model: the task it was taken after and each task's score right after its own
    training (the continual matrix's diagonal, from `eval`), for BWT with RoE on and off."""
    if after is None:
        return None
    stage = get_method(project.config.method).stage(EVAL.name)
    diagonal = {}
    for name in project.config.task_names[: project.config.task_index(after)]:
        version = project.store.require(stage, name, hint=f"dmole {EVAL.name} --after {name}")
        rows = read_parquet(version.file(EVAL.files.scores)).to_pylist()
        diagonal[name] = next(row["score"] for row in rows if row["task"] == name)
    return {"after": after, "diagonal": diagonal}


def eval_sets(project: Project, max_samples: int | None) -> EvalSets:
    """Every task's test samples, validated before any model work."""
    return [(task, load_eval_samples(project.data_root, task)[:max_samples]) for task in project.config.tasks]


def _model_and_batches(continual, task, samples) -> tuple:
    """The model to generate with and the per-batch context of a continual model's experts (None: the base)."""
    if continual is None:
        return None, None
    return continual.plan.model, continual.batches(continual.routes(task.name, samples, "test"))


def evaluate_dense(
    adapter, sets: EvalSets, batch_size: int, progress: Progress = silent, label: str = "dense", continual=None
) -> dict[str, float]:
    """Task scores with every layer executed (no routing plan active); ``continual``: a continual model's experts,
    routed per sample as `eval` routes them (stages/roe/continual.py)."""
    from ..evaluation.predict import predict, score_predictions

    scores = {}
    for task, samples in sets:
        model, around = _model_and_batches(continual, task, samples)
        scores[task.name] = score_predictions(
            task,
            samples,
            predict(
                adapter,
                task,
                samples,
                batch_size=batch_size,
                model=model,
                around_batch=around,
                progress=progress,
                description=f"{label} {task.name}",
            ),
        ).score
    return scores


def evaluate_routed(
    adapter,
    attachment,
    sets: EvalSets,
    batch_size: int,
    batch_rule: str,
    run_id: str,
    progress: Progress = silent,
    continual=None,
    fixed: FixedRouting | None = None,
) -> tuple[dict[str, float], list[dict]]:
    """Task scores with RoE routing (or a baseline's ``fixed`` routing), and one decision row per (example,
    layer)."""
    from ..evaluation.predict import predict, score_predictions
    from .inference import RequestRecorder, decision_rows

    scores, rows = {}, []
    for task, samples in sets:
        model, around = _model_and_batches(continual, task, samples)
        recorder = RequestRecorder(
            batch_rule,
            experts=(around, continual.rows) if continual is not None else None,
            fixed=fixed,
            routable=attachment.modules.shape.routable,
            benchmark=task.name,
        )
        predictions = predict(
            adapter,
            task,
            samples,
            batch_size=batch_size,
            model=model,
            around_batch=recorder,
            progress=progress,
            description=f"roe {task.name}",
        )
        scores[task.name] = score_predictions(task, samples, predictions).score
        # the recorder saw only this process's batches
        rows += merge_records(
            decision_rows(recorder, attachment, run_id=run_id, benchmark=task.name, example_ids=[s.id for s in samples])
        )
    return scores, rows


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def skip_stats(rows: Sequence[dict], n_layers: int) -> dict:
    routable = [r for r in rows if r["routable"]]
    per_layer = [[r["applied_skip"] for r in rows if r["layer"] == l] for l in range(n_layers)]
    per_example = Counter()
    for r in routable:
        per_example[(r["benchmark"], r["example_id"])] += r["applied_skip"]
    return {
        "skip_rate": _mean([r["applied_skip"] for r in routable]),
        "decided_skip_rate": _mean([r["decided_skip"] for r in routable]),
        "skip_rate_all_layers": _mean([r["applied_skip"] for r in rows]),
        "skip_rate_per_layer": [_mean(v) for v in per_layer],
        "skipped_layers_histogram": {str(k): v for k, v in sorted(Counter(per_example.values()).items())},
        "n_prompt_tokens_mean": _mean([r["n_prompt_tokens"] for r in rows if r["layer"] == 0]),
    }


def _continual_metrics(scores: dict[str, dict[str, float]], continual: dict) -> dict:
    """Last (the mean over every task after the last task) and BWT (the mean change on earlier tasks against
    their own diagonal), for the continual model without RoE (dense) and with it (roe)."""
    earlier = list(continual["diagonal"])[:-1]
    out = {"after": continual["after"], "diagonal": continual["diagonal"]}
    for run in ("dense", "roe"):
        out[f"{run}_last"] = _mean(list(scores[run].values()))
        out[f"{run}_bwt"] = _mean([scores[run][t] - continual["diagonal"][t] for t in earlier]) if earlier else None
    return out


def build_report(
    adapter,
    attachment,
    rows: list[dict],
    scores: dict[str, dict[str, float]],
    *,
    rho: float,
    batch_rule: str,
    reference: str,
    continual: dict | None = None,
) -> dict:
    """``scores`` per run and task: ``base`` (the model RoE was trained on: the untouched base, or a continual
    model, named by ``reference``), ``dense`` (the same model without skipping: the dense twin when stage 2 tuned
    the backbone, else ``base`` itself), ``forced`` (the RoE weights with every layer executed, when the backbone
    was tuned) and ``roe`` (routed). ``continual`` (continual_matrix) adds Last and BWT."""
    from .cost import theoretical_saving

    scores = {"dense": scores["base"]} | scores
    shape = attachment.modules.shape
    overall = skip_stats(rows, shape.n_layers)
    per_task = {}
    for task in scores["roe"]:
        stats = skip_stats([r for r in rows if r["benchmark"] == task], shape.n_layers)
        dense = scores["dense"][task]
        per_task[task] = {f"{run}_score": by_task[task] for run, by_task in scores.items()} | {
            "relative": scores["roe"][task] / dense if dense else None,  # RoE on over RoE off
            "skip_rate": stats["skip_rate"],
            "skip_rate_per_layer": stats["skip_rate_per_layer"],
        }
    averages = {f"{run}_score": _mean(list(by_task.values())) for run, by_task in scores.items()}
    relatives = [t["relative"] for t in per_task.values() if t["relative"] is not None]
    drop = averages["dense_score"] - averages["roe_score"]
    applied = {r["batch_rule"] for r in rows}
    return {
        "rho": rho,
        **overall,
        **averages,
        "score_drop": drop,
        "mean_relative": _mean(relatives) if relatives else None,  # per-task RoE / dense, averaged over tasks
        "dense_reference": "dense twin" if "forced" in scores else reference,
        "per_task": per_task,
        "continual": _continual_metrics(scores, continual) if continual is not None else None,
        "routable_layers": list(shape.routable),
        "batch_rule": batch_rule,
        "batch_rule_applied": "or" if "or" in applied else batch_rule,
        "theoretical_saving": theoretical_saving(
            adapter.model.config.text_config,
            shape.rank,
            overall["skip_rate_all_layers"],
            overall["n_prompt_tokens_mean"],
        ),
        "targets": {
            "skip_within_5_points": abs(overall["skip_rate"] - rho) <= SKIP_TOLERANCE,
            "score_drop_at_most_2": drop <= MAX_SCORE_DROP,
        },
    }


def write_results(writer: Writer, rows: list[dict], report: dict) -> None:
    write_parquet(writer.path(ROE_EVAL.files.decisions), {k: [r[k] for r in rows] for k in rows[0]})
    write_json(writer.path(ROE_EVAL.files.report), report)
    writer.meta.update(
        {key: report[key] for key in ("skip_rate", "base_score", "dense_score", "roe_score", "batch_rule_applied")}
    )


@dataclass
class TrainedRoE:
    """The latest route-train weights and what they were trained on (the base, or a continual model)."""

    version: Version
    config: dict
    after: str | None  # the task whose continual model RoE was trained on; None for the base
    continual_versions: list[Version]

    @classmethod
    def latest(cls, project: Project) -> TrainedRoE:
        version = project.store.require(ROUTE_TRAIN.name, TASK, hint=ROUTE_TRAIN.hint())
        config = read_json(version.file(ROUTE_TRAIN.files.config))
        after = None if config.get("from", BASE) == BASE else config["from"]  # runs before --from: the base
        return cls(version, config, after, [] if after is None else continual_inputs(project, after))

    def reference(self, project: Project) -> str:
        return trained_on(project, self.after)

    def open(self, project: Project, adapter):
        """RoE's modules (checked against the base and the continual model) and the continual model (or None)."""
        from .weights import load_roe

        modules, metadata = load_roe(
            self.version.file(ROUTE_TRAIN.files.weights),
            family=adapter.family,
            base_hash=base_hash(model_fingerprint(project)),
        )
        if metadata["dmole_checkpoint"] != continual_hash(self.continual_versions):
            raise UserError(
                f"the RoE weights were trained on other experts than {project.config.method} after "
                f"{self.after} has now; run `{ROUTE_TRAIN.hint()} --from {self.after}` again"
            )
        return modules, load_continual(project, adapter, self.after) if self.after is not None else None

    def routed_model(self, project: Project, device: str | None = None):
        """The model as RoE routes it: base (with the stage-2 backbone) or continual model, RoE attached, on
        ``device`` (default: CUDA when there is one)."""
        from .attach import attach
        from .backbone import load_stage2, tuned

        adapter = project.load_model(device=device)
        modules, continual = self.open(project, adapter)
        if tuned(self.config["stage2_mode"]):
            load_stage2(self.version.file, adapter, self.config["stage2_mode"])
        return adapter, attach(adapter, modules), continual


def evaluated_by(project: Project, trained: Version) -> Version:
    """Where ``trained``'s latest results are: the latest roe-eval when it evaluated these weights, else
    route-train's own closing evaluation."""
    evaluated = project.store.latest(ROE_EVAL.name, TASK)
    if evaluated is not None and any(
        i["stage"] == ROUTE_TRAIN.name and i["version"] == trained.number for i in evaluated.manifest["inputs"]
    ):
        return evaluated
    return trained
