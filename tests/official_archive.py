"""A miniature of the official D-MoLE data archive, in its exact layout and file formats.

``write_official_archive(root)`` writes ``root/data/...`` as the official implementation
(github.com/gcd19/D-MoLE@0725cd3) reads it, with ``per_task`` training samples and ``per_task`` evaluation
samples per task and small generated JPEG images. ``root`` plays the part of the reference's working
folder: every path inside the files starts with ``data/`` except the caption files' image names, which the
caption evaluation joins onto a per-dataset image folder.

Where each format comes from (the files that read them in the official implementation):

- Training files, all nine tasks: the InternVL chat JSONL that ``internvl/train/internvl_chat_finetune.py``
  reads through the meta files ``shell/dmole/<task>.json`` (``root: "."``, ``annotation: data/...``):
  ``{"id", "image", "conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", ...}]}``,
  the image path relative to the root ``.``. The instructions inside are each dataset's own; the ones
  written here are plausible stand-ins (dmole trains on whatever the turns say).
- Captions (``vizwiz-caption``, ``textcaps``, ``flickr30k``): COCO caption JSON read by
  ``eval/caption/evaluate_caption.py`` (``json.load(...)["images"]`` with ``id`` and ``file_name``, joined onto
  the dataset's ``root``; ground truth through ``pycocotools.COCO``: ``annotations`` with ``image_id``,
  ``caption``, ``id``). The VizWiz-Captions entries carry that dataset's extra fields (``vizwiz_url``,
  ``text_detected``, ``is_precanned``, ``is_rejected``).
- SK-VG (``skvg``): grounding JSONL read by ``eval/refcoco/evaluate_grounding.py``: ``image``, ``sent``,
  ``knowledge``, ``bbox`` (pixel ``[x1, y1, x2, y2]``), ``width``, ``height``.
- IconQA and PMC-VQA (``iconqa``, ``pmcvqa``): multiple-choice JSONL read by
  ``eval/vqa/evaluate_multi_choice.py``: ``image``, ``question``, ``choices`` (list), ``answer`` (int index).
- OCR-VQA and KVQA (``ocrvqa``, ``kvqa``): VQA JSONL read by ``eval/vqa/evaluate_vqa.py``
  (metric ``accuracy``): ``image``, ``question``, ``question_id``, ``answer``.
- VizWiz-VQA (``vizwiz``): the files ``eval/vqa/evaluate_vqa.py`` lists for ``vizwiz_val`` (the Qwen-VL
  converted set that InternVL's eval/vqa/README.md downloads): ``vizwiz_val.jsonl`` (``image``, ``question``,
  ``question_id``), ``vizwiz_val_annotations.json`` (VQAv2 form: ``{"annotations": [{"question_id",
  "image_id", "answers": [{"answer", "answer_confidence", "answer_id"}] x 10, "answer_type",
  "question_type", "multiple_choice_answer"}]}``, matched by ``question_id``) and
  ``vizwiz_val_questions.json`` (VQAv2 form ``{"questions": [{"image_id", "question", "question_id"}]}``,
  listed by the reference but never read by its evaluation; written for completeness).

Folder names follow the scripts (``data/sk-vg``, ``data/vizwiz-caption``), which is where the official
code looks; the README's sketch of the archive abbreviates them (``skvg/``).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40)}
CAPTION_INSTRUCTION = "Provide a one-sentence caption for the provided image."
GROUNDING_INSTRUCTION = (
    "Please provide the bounding box coordinate of the region this sentence describes: <ref>{}</ref>"
)


def _image(path: Path, size: int, color: str, box: tuple[int, int, int, int] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (size, size), (245, 245, 240))
    draw = ImageDraw.Draw(image)
    draw.rectangle(box or (size // 4, size // 4, 3 * size // 4, 3 * size // 4), fill=COLORS[color])
    image.save(path, format="JPEG", quality=90)


def _jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")


def _json(path: Path, document: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document), encoding="utf-8")


def _chat(sample_id: str, image: str, question: str, answer: str) -> dict:
    return {
        "id": sample_id,
        "image": image,
        "conversations": [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}],
    }


class _Writer:
    def __init__(self, root: Path, per_task: int, image_size: int, rng: random.Random):
        self.root, self.n, self.size, self.rng = root, per_task, image_size, rng

    def color(self) -> str:
        return self.rng.choice(sorted(COLORS))

    def picture(self, relative: str, color: str, box=None) -> str:
        _image(self.root / relative, self.size, color, box)
        return relative

    def captions(self, folder: str, train_images: str, eval_file: str, eval_images: str, name, extra=None) -> None:
        """A chat training file and a COCO caption file whose file names sit under ``eval_images``."""
        train = []
        for i in range(self.n):
            color = self.color()
            image = self.picture(f"{train_images}/{name('train', i)}", color)
            train.append(_chat(f"{folder}_{i}", image, CAPTION_INSTRUCTION, f"A {color} square on a white card."))
        _jsonl(self.root / f"data/{folder}/train.jsonl", train)
        images, annotations = [], []
        for i in range(self.n):
            color, file_name = self.color(), name("val", i)
            self.picture(f"{eval_images}/{file_name}", color)
            images.append({"file_name": file_name, "id": 1000 + i, **(extra(file_name) if extra else {})})
            for j, text in enumerate((f"A {color} square.", f"A {color} box on a card.", f"Something {color}.")):
                annotations.append(
                    {
                        "image_id": 1000 + i,
                        "caption": text,
                        "id": 10 * (1000 + i) + j,
                        **({"is_precanned": False, "is_rejected": False, "text_detected": False} if extra else {}),
                    }
                )
        _json(self.root / eval_file, {"info": {"description": folder}, "images": images, "annotations": annotations})

    def grounding(self) -> None:
        """SK-VG: a box of the named colour, and the knowledge sentence that the prompt starts with."""
        train, test = [], []
        for split, out in (("train", train), ("test", test)):
            for i in range(self.n):
                color, s = self.color(), self.size
                x1, y1 = self.rng.randrange(0, s // 2), self.rng.randrange(0, s // 2)
                box = (x1, y1, x1 + s // 3, y1 + s // 3)
                image = self.picture(f"data/sk-vg/images/{split}_{i:05d}.jpg", color, box)
                knowledge = f"The {color} object in picture {i} belongs to the owner of the house"
                sent = f"the thing that belongs to the owner ({color})"
                if split == "train":
                    normalised = [round(1000 * v / s) for v in box]
                    out.append(
                        _chat(
                            f"skvg_{i}",
                            image,
                            f"Based on the knowledge {knowledge}.\n" + GROUNDING_INSTRUCTION.format(sent),
                            f"<ref>{sent}</ref><box>[{normalised}]</box>",
                        )
                    )
                else:
                    out.append(
                        {
                            "image": image,
                            "sent": sent,
                            "knowledge": knowledge,
                            "bbox": list(box),
                            "width": s,
                            "height": s,
                        }
                    )
        _jsonl(self.root / "data/sk-vg/train.jsonl", train)
        _jsonl(self.root / "data/sk-vg/test.jsonl", test)

    def choice(self, folder: str, train_file: str, test_file: str, n_choices: int) -> None:
        train, test = [], []
        for split, out in (("train", train), ("test", test)):
            for i in range(self.n):
                color = self.color()
                image = self.picture(f"data/{folder}/images/{split}/{i}.jpg", color)
                choices = [color] + [c for c in sorted(COLORS) if c != color][: n_choices - 1]
                self.rng.shuffle(choices)
                question = "What colour is the square?"
                answer = choices.index(color)
                if split == "train":
                    lettered = "\n".join(f"{'ABCDE'[k]}. {c}" for k, c in enumerate(choices))
                    out.append(
                        _chat(
                            f"{folder}_{i}",
                            image,
                            f"{question}\n{lettered}\nAnswer with the option's letter from the given choices directly.",
                            "ABCDE"[answer],
                        )
                    )
                else:
                    out.append({"image": image, "question": question, "choices": choices, "answer": answer})
        _jsonl(self.root / f"data/{folder}/{train_file}", train)
        _jsonl(self.root / f"data/{folder}/{test_file}", test)

    def short(self, folder: str, test_file: str, images: str) -> None:
        train, test = [], []
        for split, out in (("train", train), ("test", test)):
            for i in range(self.n):
                color = self.color()
                image = self.picture(f"data/{folder}/{images}/{split}_{i}.jpg", color)
                question = "What colour is the cover?"
                if split == "train":
                    out.append(
                        _chat(
                            f"{folder}_{i}",
                            image,
                            f"{question} Answer the question using a single word or phrase.",
                            color,
                        )
                    )
                else:
                    out.append({"image": image, "question": question, "question_id": 500 + i, "answer": color})
        _jsonl(self.root / f"data/{folder}/train.jsonl", train)
        _jsonl(self.root / f"data/{folder}/{test_file}", test)

    def vizwiz(self) -> None:
        train, questions, jsonl, annotations = [], [], [], []
        for i in range(self.n):
            color = self.color()
            image = self.picture(f"data/vizwiz/train/VizWiz_train_{i:08d}.jpg", color)
            train.append(
                _chat(
                    f"vizwiz_{i}",
                    image,
                    "What colour is this? When the provided information is "
                    "insufficient, respond with 'Unanswerable'. Answer the question using a single word "
                    "or phrase.",
                    color,
                )
            )
        for i in range(self.n):
            color = self.color()
            image = self.picture(f"data/vizwiz/val/VizWiz_val_{i:08d}.jpg", color)
            question = "What colour is this?"
            jsonl.append({"image": image, "question": question, "question_id": i})
            questions.append({"image_id": i, "question": question, "question_id": i})
            answers = [color] * 7 + ["unanswerable"] * 2 + [f"light {color}"]
            annotations.append(
                {
                    "question_id": i,
                    "image_id": i,
                    "question_type": "other",
                    "answer_type": "other",
                    "multiple_choice_answer": color,
                    "answers": [
                        {"answer": a, "answer_confidence": "yes", "answer_id": k + 1} for k, a in enumerate(answers)
                    ],
                }
            )
        _jsonl(self.root / "data/vizwiz/train.jsonl", train)
        _jsonl(self.root / "data/vizwiz/vizwiz_val.jsonl", jsonl)
        _json(
            self.root / "data/vizwiz/vizwiz_val_questions.json",
            {
                "info": {},
                "task_type": "Open-Ended",
                "data_type": "vizwiz",
                "data_subtype": "val",
                "questions": questions,
            },
        )
        _json(
            self.root / "data/vizwiz/vizwiz_val_annotations.json",
            {"info": {}, "data_type": "vizwiz", "data_subtype": "val", "annotations": annotations},
        )


def write_official_archive(root: Path, *, per_task: int = 3, image_size: int = 32, seed: int = 0) -> Path:
    """Write the miniature archive under ``root`` (``root/data/...``) and return ``root``, the data root that
    `dmole init --benchmark dmole --data` takes."""
    root = Path(root)
    writer = _Writer(root, per_task, image_size, random.Random(seed))
    writer.captions(
        "vizwiz-caption",
        "data/vizwiz-caption/images/train",
        "data/vizwiz-caption/val.json",
        "data/vizwiz-caption/images/val",
        lambda split, i: f"VizWiz_{split}_{i:08d}.jpg",
        extra=lambda name: {
            "vizwiz_url": f"https://vizwiz.cs.colorado.edu/VizWiz_visualization_img/{name}",
            "text_detected": False,
        },
    )
    writer.grounding()
    writer.captions(
        "textcaps",
        "data/textcaps/images",
        "data/textcaps/val.json",
        "data/textcaps/images",
        lambda split, i: f"{split}_{i:016x}.jpg",
    )
    writer.choice("iconqa", "multi_text_choice_train.jsonl", "multi_text_choice_test.jsonl", n_choices=3)
    writer.short("ocrvqa", "ocrvqa_val.jsonl", "images")
    writer.captions(
        "flickr30k",
        "data/flickr30k",
        "data/flickr30k/flickr30k_test_karpathy.json",
        "data/flickr30k",
        lambda split, i: f"Images/{split}{1000000 + i}.jpg",
    )
    writer.vizwiz()
    writer.short("kvqa", "test.jsonl", "KVQAimgs")
    writer.choice("pmcvqa", "train.jsonl", "test_clean.jsonl", n_choices=4)
    return root
