"""The synthetic benchmark: procedurally drawn scenes and five tasks that cover every metric family.

Each image is a small canvas with one coloured shape on a 3 x 3 grid of positions. Like real
datasets, each task has its own visual domain (a background style). The tasks (in sequence order) are:

- ``shape-caption`` (caption, CIDEr): describe colour, shape and position. Leans on the image.
- ``color-vqa`` (vqa10, VQA accuracy): the colour of the named shape, ten annotator answers. Image.
- ``opposite-short`` (short, exact match): the opposite of a word; the image is a blank card. Text.
- ``shape-choice`` (choice, letter accuracy): which shape is shown, among four options. Image.
- ``locate-grounding`` (grounding, P@IoU0.5): the box of the described shape (in a corner). Image.

The tiny base model is pre-trained in two phases, like a real multimodal LLM that starts from a pre-trained
vision encoder: its vision side learns to tell each scene's colour, shape and position (`attribute_scenes`,
every style), then a generic mixture (describe, name or pick the colour, name the shape, say where, give a box,
copy a word) teaches its language side to answer, so it starts with some zero-shot skill; neither contains the
tasks' own prompts.
Everything is drawn from ``random.Random(seed)``, so the benchmark is identical for a seed.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..metrics.choice import format_choices, option_letters
from ..metrics.grounding import format_box

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
    "purple": (140, 60, 170),
    "orange": (240, 140, 30),
}
SHAPES = ("circle", "square", "triangle", "diamond")
CORNERS = (0, 2, 6, 8)  # grounding places its shape in a corner: four boxes to learn
POSITIONS = (
    "top left",
    "top middle",
    "top right",
    "middle left",
    "center",
    "middle right",
    "bottom left",
    "bottom middle",
    "bottom right",
)
OPPOSITES = {
    "up": "down",
    "hot": "cold",
    "big": "small",
    "fast": "slow",
    "open": "closed",
    "light": "dark",
    "full": "empty",
    "old": "new",
}
COPY_WORDS = (
    "apple",
    "river",
    "stone",
    "cloud",
    "tiger",
    "piano",
    "lemon",
    "robot",
    "ocean",
    "candle",
    "forest",
    "bridge",
    "garden",
    "rocket",
    "silver",
    "window",
    "planet",
    "yellow",
    "summer",
    "mirror",
)

TASK_PROMPTS = {
    "shape-caption": "Describe the image in one sentence.",
    "color-vqa": "{question} Answer with one word.",
    "opposite-short": "{question} Answer with one word.",
    "shape-choice": "{question}\n{choices}\nAnswer with the letter.",
    "locate-grounding": "Give the box of <ref>{sent}</ref>",
}
TASK_FAMILIES = {
    "shape-caption": "caption",
    "color-vqa": "vqa10",
    "opposite-short": "short",
    "shape-choice": "choice",
    "locate-grounding": "grounding",
}
TASK_DESCRIPTIONS = {
    "shape-caption": "caption the colour, shape and position of the object (leans on the image)",
    "color-vqa": "name the colour of the shape, ten annotator answers (image)",
    "opposite-short": "give the opposite of a word; the image is a blank card (text)",
    "shape-choice": "pick the shown shape among four options (image)",
    "locate-grounding": "box the described shape in one of the four corners, 0-1000 coordinates (image)",
}
TASK_STYLES = {
    "shape-caption": "gray",
    "color-vqa": "dark",
    "opposite-short": "checker",
    "shape-choice": "paper",
    "locate-grounding": "gradient",
}
STYLES = ("gray", "dark", "paper", "gradient", "checker")
# Byte-level tokens: the limits are in bytes (the longest caption is 40, a box 19, plus the end token).
GENERATION_LIMITS = {"caption": (48, 4), "vqa10": (12, 0), "short": (12, 0), "choice": (4, 0), "grounding": (24, 0)}


@dataclass(frozen=True)
class Scene:
    color: str
    shape: str
    position: int
    style: str

    @property
    def position_name(self) -> str:
        return POSITIONS[self.position]


@dataclass(frozen=True)
class SynthSizes:
    image_size: int = 32
    train_per_task: int = 320
    test_per_task: int = 48
    pretrain_samples: int = 2400
    vision_samples: int = 3000


# What the vision side is pre-trained to tell from a scene: each attribute's classes, in label order.
SCENE_ATTRIBUTES = {"color": tuple(sorted(COLORS)), "shape": SHAPES, "position": POSITIONS}


def box_of(scene: Scene, image_size: int) -> list[int]:
    """Pixel box of the shape: half the canvas wide, on a 3 x 3 grid of quarter-canvas steps."""
    step, side = image_size // 4, image_size // 2
    row, col = divmod(scene.position, 3)
    return [col * step, row * step, col * step + side, row * step + side]


def _background(style: str, image_size: int, rng: random.Random) -> np.ndarray:
    """An H x W x 3 canvas in one of the visual domains (each task has its own, like real datasets do)."""
    noise = np.random.default_rng(rng.getrandbits(32))
    ramp = np.linspace(0, 1, image_size)
    if style == "gray":
        canvas = np.full((image_size, image_size, 3), 120.0) + noise.integers(-12, 13, (image_size, image_size, 1))
    elif style == "dark":
        canvas = np.full((image_size, image_size, 3), 25.0) + noise.integers(0, 20, (image_size, image_size, 3))
    elif style == "paper":
        canvas = np.full((image_size, image_size, 3), 235.0) - noise.integers(0, 8, (image_size, image_size, 1))
    elif style == "gradient":
        canvas = np.stack(
            [
                40 + 150 * ramp[None, :].repeat(image_size, 0),
                60 + 100 * ramp[:, None].repeat(image_size, 1),
                np.full((image_size, image_size), 160.0),
            ],
            axis=2,
        )
    elif style == "checker":
        cells = (np.add.outer(np.arange(image_size) // 4, np.arange(image_size) // 4) % 2)[..., None]
        canvas = 90.0 + 70.0 * cells.repeat(3, axis=2)
    else:
        raise ValueError(f"unknown style {style!r}")
    return np.clip(canvas, 0, 255)


def draw_scene(scene: Scene, image_size: int, rng: random.Random) -> Image.Image:
    image = Image.fromarray(_background(scene.style, image_size, rng).astype(np.uint8))
    x1, y1, x2, y2 = box_of(scene, image_size)
    fill, draw = COLORS[scene.color], ImageDraw.Draw(image)
    inset = max(1, image_size // 32)
    x1, y1, x2, y2 = x1 + inset, y1 + inset, x2 - inset - 1, y2 - inset - 1
    middle_x, middle_y = (x1 + x2) // 2, (y1 + y2) // 2
    outline = (0, 0, 0) if scene.style == "paper" else None
    if scene.shape == "circle":
        draw.ellipse((x1, y1, x2, y2), fill=fill, outline=outline)
    elif scene.shape == "square":
        draw.rectangle((x1, y1, x2, y2), fill=fill, outline=outline)
    elif scene.shape == "triangle":
        draw.polygon([(middle_x, y1), (x2, y2), (x1, y2)], fill=fill, outline=outline)
    else:
        draw.polygon([(middle_x, y1), (x2, middle_y), (middle_x, y2), (x1, middle_y)], fill=fill, outline=outline)
    return image


def noise_image(image_size: int, rng: random.Random) -> Image.Image:
    pixels = np.random.default_rng(rng.getrandbits(32)).integers(0, 256, (image_size, image_size, 3))
    return Image.fromarray(pixels.astype(np.uint8))


def random_scene(rng: random.Random, style: str) -> Scene:
    return Scene(rng.choice(sorted(COLORS)), rng.choice(SHAPES), rng.randrange(len(POSITIONS)), style)


def caption_references(scene: Scene) -> list[str]:
    c, s, p = scene.color, scene.shape, scene.position_name
    article = "an" if c[0] in "aeiou" else "a"
    return [
        f"{article} {c} {s} in the {p}.",
        f"there is {article} {c} {s} in the {p}.",
        f"a {s} coloured {c} in the {p}.",
    ]


def vqa_answers(scene: Scene, rng: random.Random) -> list[str]:
    """Ten annotators: most give the colour, a few write a variant or an unrelated word."""
    variants = [scene.color, f"{scene.color} color", "unanswerable"]
    return [scene.color] * 7 + [rng.choice(variants) for _ in range(3)]


class _Writer:
    """Writes one task's files in the D-MoLE layout: images, train.jsonl and the evaluation file."""

    def __init__(self, root: Path, task: str, image_size: int):
        self.root, self.task, self.image_size = root, task, image_size
        (root / task / "images").mkdir(parents=True, exist_ok=True)

    def image(self, name: str, image: Image.Image) -> str:
        relative = f"{self.task}/images/{name}.png"
        image.save(self.root / relative)
        return relative

    def jsonl(self, name: str, records: list[dict]) -> str:
        relative = f"{self.task}/{name}"
        with (self.root / relative).open("w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(record) + "\n" for record in records)
        return relative


def _chat(image: str, question: str, answer: str, sample_id: str) -> dict:
    return {
        "id": sample_id,
        "image": image,
        "conversations": [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}],
    }


def _task_item(task: str, rng: random.Random, writer: _Writer, name: str) -> tuple[dict, dict, str]:
    """One sample of ``task``: (prompt fields, eval record without the image, training answer) and its image."""
    size = writer.image_size
    if task == "opposite-short":
        word = rng.choice(sorted(OPPOSITES) + sorted(OPPOSITES.values()))
        reverse = {v: k for k, v in OPPOSITES.items()}
        answer = OPPOSITES.get(word) or reverse[word]
        question = f"What is the opposite of '{word}'?"
        card = Image.fromarray(_background(TASK_STYLES[task], size, rng).astype(np.uint8))
        return {"question": question}, {"question": question, "answer": answer}, answer, writer.image(name, card)
    scene = random_scene(rng, TASK_STYLES[task])
    if task == "locate-grounding":
        scene = replace(scene, position=rng.choice(CORNERS))
    image = writer.image(name, draw_scene(scene, size, rng))
    if task == "shape-caption":
        return {}, {"references": caption_references(scene)}, caption_references(scene)[0], image
    if task == "color-vqa":
        question = f"What color is the {scene.shape}?"
        return {"question": question}, {"question": question, "answers": vqa_answers(scene, rng)}, scene.color, image
    if task == "shape-choice":
        choices = list(SHAPES)
        question, gold = "Which shape is shown?", choices.index(scene.shape)
        return (
            {"question": question, "choices": choices},
            {"question": question, "choices": choices, "answer": gold},
            "ABCDE"[gold],
            image,
        )
    box = box_of(scene, size)
    sent = f"the {scene.color} {scene.shape}"
    return (
        {"sent": sent},
        {"sent": sent, "bbox": box, "width": size, "height": size},
        format_box(box, size, size),
        image,
    )


def _training_items(task: str, rng: random.Random, writer: _Writer, count: int):
    """The task's first ``count`` training items, as `_task_item` draws them from the task's random stream."""
    for number in range(count):
        yield _task_item(task, rng, writer, f"train-{number:05d}")


def write_benchmark(root: Path, *, seed: int = 0, sizes: SynthSizes = SynthSizes()) -> list[dict]:
    """Write the five tasks under ``root`` and return their registry entries (also saved as tasks.json)."""
    registry = []
    for task, template in TASK_PROMPTS.items():
        rng = random.Random(f"{seed}-{task}")
        writer = _Writer(root, task, sizes.image_size)
        train = []
        for number, (fields, _, answer, image) in enumerate(_training_items(task, rng, writer, sizes.train_per_task)):
            question = template.format_map({**fields, "choices": _letters(fields.get("choices"))})
            train.append(_chat(image, question, answer, f"{task}-train-{number}"))
        family = TASK_FAMILIES[task]
        # drawn after the training and test items, so adding the validation split left those unchanged
        split_files = {
            split: _write_eval(
                writer,
                family,
                split,
                [_eval_record(task, rng, writer, f"{split}-{n:05d}") for n in range(sizes.test_per_task)],
            )
            for split in ("test", "val")
        }
        max_new, min_new = GENERATION_LIMITS[family]
        registry.append(
            {
                "name": task,
                "family": family,
                "train": writer.jsonl("train.jsonl", train),
                "eval": split_files["test"],
                "val": split_files["val"],
                "prompt": template,
                "max_new_tokens": max_new,
                "min_new_tokens": min_new,
                "description": TASK_DESCRIPTIONS[task],
            }
        )
    (root / "tasks.json").write_text(json.dumps({"tasks": registry}, indent=2) + "\n", encoding="utf-8")
    return registry


def training_items_as_eval(
    root: Path, task: str, count: int, *, seed: int = 0, sizes: SynthSizes = SynthSizes()
) -> str:
    """Write ``task``'s first ``count`` training items again under ``root``, as an evaluation split
    (``train-as-eval``) with the references the task's metric reads: drawn from the random stream
    `write_benchmark` drew them from with the same ``seed`` and ``sizes``, so the images and answers are the
    training file's. Returns the evaluation file's path relative to ``root``."""
    if not 0 < count <= sizes.train_per_task:
        raise ValueError(f"count must be between 1 and the {sizes.train_per_task} training items, not {count}")
    writer = _Writer(root, task, sizes.image_size)
    items = _training_items(task, random.Random(f"{seed}-{task}"), writer, count)
    records = [{"image": image, **record} for _, record, _, image in items]
    return _write_eval(writer, TASK_FAMILIES[task], "train-as-eval", records)


def _letters(choices: list[str] | None) -> str:
    return format_choices(choices) if choices else ""


def _eval_record(task: str, rng: random.Random, writer: _Writer, image_name: str) -> dict:
    _, record, _, image = _task_item(task, rng, writer, image_name)
    return {"image": image, **record}


def _write_eval(writer: _Writer, family: str, split: str, records: list[dict]) -> str:
    if family != "caption":
        return writer.jsonl(f"{split}.jsonl", [{"question_id": i, **r} for i, r in enumerate(records)])
    document = {
        "images": [{"id": i, "file_name": r["image"]} for i, r in enumerate(records)],
        "annotations": [{"image_id": i, "caption": c} for i, r in enumerate(records) for c in r["references"]],
    }
    relative = f"{writer.task}/{split}_captions.json"
    (writer.root / relative).write_text(json.dumps(document), encoding="utf-8")
    return relative


def pretraining_mixture(root: Path, *, seed: int = 0, sizes: SynthSizes = SynthSizes()) -> list[dict]:
    """Generic instruction data for the tiny base: colours (named, and picked among four lettered options), shapes,
    positions (named and as a box), and copying a word."""
    rng = random.Random(f"{seed}-pretrain")
    writer = _Writer(root, "pretrain", sizes.image_size)
    colors = SCENE_ATTRIBUTES["color"]
    records = []
    for number in range(sizes.pretrain_samples):
        kind = number % 7
        if kind == 6:
            word = rng.choice(COPY_WORDS + tuple(OPPOSITES) + tuple(OPPOSITES.values()))
            image = writer.image(f"{number:05d}", noise_image(sizes.image_size, rng))
            records.append(_chat(image, f"Repeat the word '{word}'.", word, f"pretrain-{number}"))
            continue
        scene = random_scene(rng, rng.choice(STYLES))
        image = writer.image(f"{number:05d}", draw_scene(scene, sizes.image_size, rng))
        subject = rng.choice(("object", scene.shape))
        box = format_box(box_of(scene, sizes.image_size), sizes.image_size, sizes.image_size)
        options = rng.sample([c for c in colors if c != scene.color], 3) + [scene.color]
        rng.shuffle(options)
        question, answer = (
            ("What do you see?", f"{scene.color} {scene.shape}, {scene.position_name}."),
            (f"What color is the {subject}?", scene.color),
            ("Name the shape.", scene.shape),
            ("Where is the object?", scene.position_name),
            ("Where is the object? Answer with its box.", box),
            (
                f"Which colour is the object?\n{format_choices(options)}\nAnswer with the option's letter.",
                option_letters(len(options))[options.index(scene.color)],
            ),
        )[kind]
        records.append(_chat(image, question, answer, f"pretrain-{number}"))
    writer.jsonl("train.jsonl", records)
    return records


def attribute_scenes(
    *, seed: int = 0, sizes: SynthSizes = SynthSizes()
) -> tuple[list[Image.Image], dict[str, list[int]]]:
    """Scenes in every style and, per attribute of ``SCENE_ATTRIBUTES``, each scene's class index."""
    rng = random.Random(f"{seed}-attributes")
    scenes = [random_scene(rng, rng.choice(STYLES)) for _ in range(sizes.vision_samples)]
    images = [draw_scene(scene, sizes.image_size, rng) for scene in scenes]
    values = {"color": lambda s: s.color, "shape": lambda s: s.shape, "position": lambda s: POSITIONS[s.position]}
    return images, {
        name: [classes.index(values[name](s)) for s in scenes] for name, classes in SCENE_ATTRIBUTES.items()
    }
