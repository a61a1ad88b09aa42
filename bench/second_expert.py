"""D-MoLE's second-expert rules side by side on one trained workspace: evaluation only, the experts and
routers fixed, as the authors' threshold study does. Per rule: Last and BWT over the continual matrix
(every stage re-evaluated with the rule), each task's score after the last stage and its gap to top-1 routing
(no second expert, the obvious alternative), and, at the last stage, how many test samples got two experts and
what the rule did to them against top-1 (mean score change on the samples whose routing differs).

    python bench/second_expert.py --demo dmole-demo [--threshold-scale 10] [--json bench/results/second_expert.json]

``--threshold-scale`` loosens every router (default: the workspace's own scale); the synthetic tasks are so
distinct that at the workspace's scale no sample gets a second expert, so the rules only differ once the
routers accept more, as on real-image sequences.

The workspace is copied to a scratch folder first, so the demo's own evaluations stay as they are.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from dmole.artifacts.io import read_parquet
from dmole.stages.evaluate import ZERO_SHOT, evaluate
from dmole.stages.metrics.continual import continual_metrics
from dmole.stages.project import Project
from dmole.stages.registry import EVAL
from dmole.stages.resolve import stage_options

BASELINE = "top-1"
# per-sample rules at eval's default ranking (relative error); two at the paper's raw-error ranking, to show it
RULES = {
    BASELINE: {"top": 1},
    "top-1, raw error": {"top": 1, "ranking": "error"},
    "partner": {"second_expert": "partner"},
    "partner, raw error": {"second_expert": "partner", "ranking": "error"},
    "margin": {"second_expert": "margin"},
    "any": {"second_expert": "any"},
    "weighted": {"second_expert": "weighted"},
    "batch-vote": {"routing": "batch-vote"},
}


def _rows(version) -> dict[str, list[dict]]:
    return {
        path.stem: read_parquet(path).to_pylist() for path in sorted((version.path / "predictions").glob("*.parquet"))
    }


def measure(workspace: Path, threshold_scale: float | None = None) -> dict:
    project = Project.open(workspace)
    names = project.config.task_names
    zero = {
        r["task"]: r["score"]
        for r in read_parquet(
            project.store.require(EVAL.name, ZERO_SHOT, hint="dmole demo").file(EVAL.files.scores)
        ).to_pylist()
    }
    results, last_rows = {}, {}
    for rule, update in RULES.items():
        options = stage_options(project.config, EVAL.name, {**update, "threshold_scale": threshold_scale})
        matrix = [[zero[n] for n in names]]
        for after in names:
            version = evaluate(project, after, options).version
            scores = {r["task"]: r["score"] for r in read_parquet(version.file(EVAL.files.scores)).to_pylist()}
            matrix.append([scores[n] for n in names])
        last_rows[rule] = _rows(version)
        metrics = continual_metrics(matrix)
        flat = [r for rows in last_rows[rule].values() for r in rows]
        results[rule] = {
            "last": metrics["last"],
            "bwt": metrics["bwt"],
            "avg_seen": metrics["avg_seen"],
            "last_row": dict(zip(names, matrix[-1])),
            "two_experts": sum(len(r["routed_tasks"]) == 2 for r in flat),
            "samples": len(flat),
        }
    reference = {(t, r["sample_id"]): r for t, rows in last_rows[BASELINE].items() for r in rows}
    for rule in RULES:
        changed = [
            (r["score"], reference[t, r["sample_id"]]["score"])
            for t, rows in last_rows[rule].items()
            for r in rows
            if r["routed_tasks"] != reference[t, r["sample_id"]]["routed_tasks"]
        ]
        results[rule]["routing_changed_vs_top1"] = len(changed)
        results[rule]["score_change_on_those"] = (sum(a - b for a, b in changed) / len(changed)) if changed else 0.0
        results[rule]["worst_task_vs_top1"] = min(
            results[rule]["last_row"][n] - results[BASELINE]["last_row"][n] for n in names
        )
    return results


def report(results: dict, json_path: Path | None) -> None:
    """Print the rules side by side as a markdown table; also write them to ``json_path`` when given."""
    names = list(next(iter(results.values()))["last_row"])
    print(
        "| rule | Last | BWT | AVG (seen) | worst task vs top-1 | two experts (last stage) | routing changed vs top-1 "
        "| score change there |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for rule, r in results.items():
        print(
            f"| {rule} | {r['last']:.2f} | {r['bwt']:.2f} | {r['avg_seen']:.2f} | {r['worst_task_vs_top1']:+.2f} "
            f"| {r['two_experts']}/{r['samples']} | {r['routing_changed_vs_top1']} "
            f"| {r['score_change_on_those']:+.2f} |"
        )
    print("\n| rule | " + " | ".join(names) + " |\n|---|" + "---:|" * len(names))
    for rule, r in results.items():
        print(f"| {rule} | " + " | ".join(f"{r['last_row'][n]:.2f}" for n in names) + " |")
    if json_path:
        json_path.write_text(json.dumps(results, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", type=Path, required=True, help="the folder `dmole demo --out` wrote")
    parser.add_argument("--threshold-scale", type=float, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "demo"
        shutil.copytree(args.demo, copy, symlinks=True)
        results = measure(copy / "workspace", args.threshold_scale)
    report(results, args.json)


if __name__ == "__main__":
    main()
