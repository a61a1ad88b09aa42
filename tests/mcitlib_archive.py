"""Miniatures of UCIT and MLLM-DCL in MCITlib's layout (github.com/Ghy0501/MCITlib@2956dfd, README.md "Benchmarks").

``write_mcitlib_archive(root)`` writes ``root/UCIT/`` and ``root/Domain_data/`` as MCITlib's scripts read them,
``root`` playing the part of its ``/your_path``, with ``per_task`` training and test samples per task and small
generated JPEG images:

- ``UCIT/<task>/train.json``, ``Domain_data/<task>/train.json``: LLaVA chat lists ``[{"id", "image",
  "conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": ...}]}]``, read by
  ``LoRA-FT/llava/train/train.py`` with ``--image_folder`` (data config ``image_folder``);
- ``<task>/test.json``: ``[{"question_id", "image", "text", "answer"}]``, the fields
  ``llava/eval/CoIN/model_*.py`` (``question_id``, ``image``, ``text``) and the scoring scripts (``answer``) read;
- UCIT's caption tasks add ``val_coco_type_3000.json``, COCO ground truth whose ``image_id`` k is the k-th
  question (``eval_caption.py``); its name is HiDe-LLaVA's README's (github.com/Ghy0501/HiDe-LLaVA@4dd0793);
- images: UCIT's under the shared ``UCIT/datasets/<dataset>/...`` (HiDe-LLaVA's README tree), each DCL task's
  under its own folder (data configs ``image_folder``: ``Domain_data/<task>``).

The questions and answers are plausible stand-ins; dmole reads whatever the files say.
"""

from __future__ import annotations

from pathlib import Path

from dmole.stages.data.mcitlib_benchmarks import CAPTION_ANNOTATIONS, DCL_TASKS, UCIT_TASKS
from official_archive import COLORS, _chat, _image, _json


def _task(folder: Path, image_folder: Path, dataset: str, family: str, per_task: int, image_size: int) -> None:
    colors = list(COLORS)
    train, test, images, annotations = [], [], [], []
    for split, records in (("train", train), ("test", test)):
        for k in range(per_task):
            color = colors[k % len(colors)]
            image = f"{dataset}/{split}/{dataset.lower()}_{k:05d}.jpg"
            _image(image_folder / image, image_size, color)
            caption = f"a {color} square on a white background"
            if family == "caption":
                question, answer = "Provide a one-sentence caption for the provided image.", caption
            else:
                question, answer = "What color is the square?\nAnswer with a single word.", color
            if split == "train":
                records.append(_chat(f"{dataset}_{k}", image, question, answer))
                continue
            records.append({"question_id": f"{dataset}_test_{k}", "image": image, "text": question, "answer": answer})
            images.append({"id": k + 1, "file_name": image})
            annotations.extend(
                {"image_id": k + 1, "caption": text, "id": 2 * k + j}
                for j, text in enumerate((caption, f"the {color} square"))
            )
    _json(folder / "train.json", train)
    _json(folder / "test.json", test)
    if family == "caption":
        _json(folder / CAPTION_ANNOTATIONS, {"images": images, "annotations": annotations})


def write_mcitlib_archive(root: Path, *, per_task: int = 3, image_size: int = 32) -> Path:
    for task in UCIT_TASKS:
        _task(root / "UCIT" / task.name, root / "UCIT/datasets", task.name, task.family, per_task, image_size)
    for task in DCL_TASKS:
        folder = root / "Domain_data" / task.name
        _task(folder, folder, "images", task.family, per_task, image_size)
    return root
