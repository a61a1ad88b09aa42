"""A miniature of CoIN's benchmark in its layout (github.com/zackschen/CoIN@4122465, README.md "Dataset").

``write_coin_archive(root)`` writes what CoIN's LLaVA scripts read, ``root`` playing the part of the folder they
run from, with ``per_task`` training and evaluation samples per task and small generated JPEG images:

- ``playground/Instructions_Original/<Task>/train.json``: LLaVA chat lists ``[{"id", "image", "conversations"}]``
  (``scripts/LLaVA/Train/*.sh --data_path``), images relative to ``cl_dataset`` (``--image_folder``);
- the question files the Eval scripts name (``test.json``; ``val.json`` for TextVQA, VizWiz and VQAv2):
  ``[{"question_id", "image", "text", "answer"}]``, the fields model_*.py (``question_id``, ``image``, ``text``)
  and create_prompt.py (``answer``) read; Grounding's hold ``answer_bbox`` (0-1 in the padded square, as
  eval_grounding.py's change_bbox computes it) and ``size`` instead of ``answer``;
- the original datasets' files three scoring scripts read under ``cl_dataset``: ScienceQA's ``problems.json``
  and ``pid_splits.json`` (eval_science_qa.py; the choices and the gold index), TextVQA's
  ``TextVQA_0.5.1_val.json`` (eval_textvqa.py; ``{"data": [{"question_id", "answers": [10 strings]}]}``) and
  GQA's ``testdev_balanced_questions.json`` (eval_gqa.py; ``{id: {"question", "answer", "isBalanced", ...}}``).

ScienceQA keeps a text-only problem (no ``image``) in each split, as the dataset has and CoIN's loaders expect
(model_vqa_science.py: ``if 'image' in line``); its texts carry the ``<image>`` model_vqa_science.py removes.
The Grounding images are wider than tall, so the padded square differs from the image. The questions and
answers are plausible stand-ins; dmole reads whatever the files say.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from dmole.stages.data.coin_benchmark import COIN_TASKS, IMAGES, INSTRUCTIONS
from official_archive import COLORS, _chat, _image, _json

SHORT = "Answer the question using a single word or phrase."
LETTER = "Answer with the option's letter from the given choices directly."
GROUNDING = "Please provide the bounding box coordinate of the region this sentence describes: {}"
IMAGE_FOLDERS = {
    "ScienceQA": "ScienceQA/images/{split}/{k}",
    "TextVQA": "TextVQA/train_images",
    "ImageNet": "ImageNet/{split}",
    "GQA": "GQA/images",
    "VizWiz": "VizWiz/{split}",
    "Grounding": "COCO2014/train2014",
    "VQAv2": "COCO2014/{split}2014",
    "OCRVQA": "OCR-VQA/images",
}
GROUNDING_SIZE = (40, 24)  # width, height: the image is padded to a 40 x 40 square (8 rows above and below)


def _padded_box(box: tuple[int, int, int, int], width: int, height: int) -> str:
    """A pixel box as eval_grounding.py's change_bbox writes it: shifted into the padded square, over its side."""
    side = max(width, height)
    dx, dy = (side - width) / 2, (side - height) / 2
    x1, y1, x2, y2 = box
    return (
        "["
        + ", ".join(f"{v:.2f}" for v in ((x1 + dx) / side, (y1 + dy) / side, (x2 + dx) / side, (y2 + dy) / side))
        + "]"
    )


def _grounding_image(path: Path, color: str, box: tuple[int, int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", GROUNDING_SIZE, (245, 245, 240))
    ImageDraw.Draw(image).rectangle(box, fill=COLORS[color])
    image.save(path, format="JPEG", quality=90)


def _sample(task: str, k: int, image: str, color: str) -> tuple[str, str, dict]:
    """(question text, training answer, the question file's answer fields) of sample k."""
    if task == "ScienceQA":
        question = (
            f"Question: Which color is the square?\nContext: N/A\nOptions: (A) {color} (B) gray\n<image>\n{LETTER}"
        )
        return question, "A", {"answer": "A"}
    if task == "Grounding":
        box = (4 + k, 4, 20 + k, 18)
        _grounding_image(Path(image), color, box)
        answer = _padded_box(box, *GROUNDING_SIZE)
        return GROUNDING.format(f"the {color} box"), answer, {"answer_bbox": answer, "size": list(GROUNDING_SIZE)}
    if task == "ImageNet":
        return f"What is the object in the image?\n{SHORT}", f"{color} square", {"answer": f"{color} square"}
    return f"What color is the square?\n{SHORT}", color, {"answer": color}


def _task(root: Path, task: str, question_file: str, per_task: int, image_size: int) -> None:
    colors = list(COLORS)
    folder = root / INSTRUCTIONS / task
    train, questions, problems, splits, textvqa, gqa = [], [], {}, {"train": [], "val": [], "test": []}, [], {}
    for split, records in (("train", train), ("test", questions)):
        for k in range(per_task):
            color = colors[k % len(colors)]
            question_id = f"{split}{k}" if task != "TextVQA" else 1000 * (split == "test") + k
            name = split if split == "train" else Path(question_file).stem  # test or val
            image = f"{IMAGE_FOLDERS[task].format(split=name, k=question_id)}/{task.lower()}_{name}_{k:05d}.jpg"
            if task != "Grounding":
                _image(root / IMAGES / image, image_size, color)
            text, answer, fields = _sample(task, k, str(root / IMAGES / image), color)
            if split == "train":
                records.append(_chat(f"{task}_{question_id}", image, text, answer))
                if "<image>" in text:  # ScienceQA's, which carries its placeholder already
                    records[-1]["conversations"][0]["value"] = text
            else:
                records.append({"question_id": question_id, "image": image, "text": text, **fields})
            splits[split].append(str(question_id))
            problems[str(question_id)] = {"question": "Which color is the square?", "choices": [color, "gray"]}
            problems[str(question_id)].update({"answer": 0, "hint": "", "image": "image.jpg", "split": split})
            if split == "test":  # TextVQA's val annotations and GQA's testdev questions
                textvqa.append({"question_id": question_id, "question": "what color is the square?"})
                textvqa[-1]["answers"] = [color] * 7 + ["grey", "gray", "unanswerable"]
                gqa[str(question_id)] = {"question": "What color is the square?", "answer": color, "isBalanced": True}
                gqa[str(question_id)]["types"] = {"structural": "query", "semantic": "attr", "detailed": "color"}
    if task == "ScienceQA":  # the dataset's text-only problems, which CoIN's files keep (no "image")
        text = f"Question: Which is a mammal?\nContext: N/A\nOptions: (A) trout (B) otter\n{LETTER}"
        conversation = [{"from": "human", "value": text}, {"from": "gpt", "value": "B"}]
        train.append({"id": "train-text", "conversations": conversation})
        questions.append({"question_id": "test-text", "text": text, "answer": "B"})
        problems["test-text"] = {"question": "Which is a mammal?", "choices": ["trout", "otter"], "answer": 1}
        problems["test-text"].update({"hint": "", "image": None, "split": "test"})
        splits["test"].append("test-text")
        _json(root / IMAGES / "ScienceQA/problems.json", problems)
        _json(root / IMAGES / "ScienceQA/pid_splits.json", splits)
    if task == "TextVQA":
        document = {"dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1", "data": textvqa}
        _json(root / IMAGES / "TextVQA/TextVQA_0.5.1_val.json", document)
    if task == "GQA":
        _json(root / IMAGES / "GQA/testdev_balanced_questions.json", gqa)
    _json(folder / "train.json", train)
    _json(folder / question_file, questions)


def write_coin_archive(root: Path, *, per_task: int = 3, image_size: int = 32) -> Path:
    for task in COIN_TASKS:
        _task(root, task.name, Path(task.eval).name, per_task, image_size)
    return root
