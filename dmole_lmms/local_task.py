"""A local lmms-eval task over one task's test set of a dmole workspace, which reproduces `dmole eval`'s score for
that task: each document carries the task's rendered prompt (as `eval` renders it), its image and its references;
the task's ``max_new_tokens`` / ``min_new_tokens`` are `eval`'s, and the score is the task's own metric
(stages/metrics), aggregated over the whole test set as `eval` aggregates it.

    python -m dmole.lmms.local_task --workspace W --task color-vqa --out my-tasks
    lmms-eval --model dmole --model_args workspace=W,after=LAST --tasks dmole_color_vqa --include_path my-tasks

The functions below are the task's (its YAML names them as ``!function dmole.lmms.local_task.<name>``). Nothing
here imports lmms-eval; writing the dataset needs `datasets`.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

from dmole.stages.data.images import load_image
from dmole.stages.data.prompts import render_prompt
from dmole.stages.data.tasks import load_eval_samples
from dmole.stages.errors import UserError
from dmole.stages.metrics.families import score_family
from dmole.stages.project import Project

FUNCTIONS = "dmole.lmms.local_task"


def default_name(task: str) -> str:
    """The lmms-eval task name of a dmole task (lmms-eval's names are identifiers)."""
    return "dmole_" + task.replace("-", "_").replace(".", "_")


def write_local_task(project: Project, task_name: str, folder: Path, name: str | None = None) -> Path:
    """Write ``<name>.yaml`` and its dataset ``<name>-data`` (save_to_disk) into ``folder``; returns the YAML."""
    from datasets import Dataset, DatasetDict
    from datasets import Image as ImageFeature

    task = project.config.task(task_name)
    name = name or default_name(task_name)
    samples = load_eval_samples(project.data_root, task)
    images = []
    for sample in samples:
        buffer = io.BytesIO()
        load_image(sample.image).save(buffer, format="PNG")
        images.append({"bytes": buffer.getvalue(), "path": None})
    rows = {
        "image": images,
        "sample_id": [s.id for s in samples],
        "family": [task.family] * len(samples),
        "prompt": [render_prompt(task, s) for s in samples],
        "references": [json.dumps(s.references) for s in samples],
    }
    folder.mkdir(parents=True, exist_ok=True)
    data = (folder / f"{name}-data").resolve()
    DatasetDict(test=Dataset.from_dict(rows).cast_column("image", ImageFeature())).save_to_disk(str(data))
    max_new, min_new = task.generation_limits
    yaml = folder / f"{name}.yaml"
    yaml.write_text(f"""task: {name}
dataset_path: {data}
dataset_kwargs:
  load_from_disk: true
test_split: test
output_type: generate_until
doc_to_visual: !function {FUNCTIONS}.doc_to_visual
doc_to_text: !function {FUNCTIONS}.doc_to_text
doc_to_target: sample_id
generation_kwargs:
  max_new_tokens: {max_new}
  min_new_tokens: {min_new}
process_results: !function {FUNCTIONS}.process_results
metric_list:
  - metric: dmole_score
    aggregation: !function {FUNCTIONS}.aggregate
    higher_is_better: true
""")
    return yaml


def doc_to_visual(doc):
    return [doc["image"].convert("RGB")]


# lmms-eval's doc_to_text signature; the prompt needs no task kwargs
def doc_to_text(doc, lmms_eval_specific_kwargs=None):  # noqa: ARG001
    return doc["prompt"]


def process_results(doc, results):
    return {"dmole_score": {"family": doc["family"], "reply": results[0], "references": json.loads(doc["references"])}}


def aggregate(items):
    score, _, _ = score_family(items[0]["family"], [i["reply"] for i in items], [i["references"] for i in items])
    return score


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dmole.lmms.local_task", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", type=Path, required=True, help="the dmole workspace")
    parser.add_argument("--task", required=True, help="the workspace's task whose test set the lmms-eval task is")
    parser.add_argument("--out", type=Path, required=True, help="the folder to pass to lmms-eval's --include_path")
    parser.add_argument("--name", help="the lmms-eval task name (default: dmole_<task>)")
    args = parser.parse_args(argv)
    try:
        yaml = write_local_task(Project.open(args.workspace), args.task, args.out, args.name)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote lmms-eval task {yaml.stem} to {yaml}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
