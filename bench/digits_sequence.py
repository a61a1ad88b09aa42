"""D-MoLE's second-expert rules on a real-image task sequence: scanned handwritten digits (scikit-learn's
copy of the UCI digits, 1,797 real 8 x 8 scans, upscaled to 32 x 32), five tasks over the same images, so
the tasks' routers see one visual domain and do accept each other's samples, as on real benchmarks.

    pip install scikit-learn        # bench-only: the images ship inside it
    python bench/digits_sequence.py --base dmole-demo/base-model --out digits-bench \\
        [--json bench/results/second_expert_digits.json]

The tasks (each 240 training and 40 test samples; the synthetic benchmark's stage settings):
digit-caption (caption, "a handwritten three"), digit-vqa (vqa10, ten answers), digit-parity (short,
"even"/"odd"), digit-choice (choice among four digits), digit-next (short, the next digit's name). D-MoLE
runs the whole loop once; then every stage is re-evaluated under each second-expert rule, as
`bench/second_expert.py` does.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np
from PIL import Image

from dmole.stages.demo import run_pipeline
from dmole.stages.init import create_workspace
from dmole.stages.project import Project
from dmole.stages.synth import STAGE_DEFAULTS

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TRAIN, TEST = 240, 40


def _image(pixels: np.ndarray) -> Image.Image:
    grey = (255 - pixels * 16).clip(0, 255).astype(np.uint8)  # ink 0..16 -> dark on light paper
    return Image.fromarray(grey).resize((32, 32), Image.Resampling.NEAREST).convert("RGB")


def _item(task: str, digit: int, rng: random.Random) -> tuple[str, str, dict]:
    """(training question, training answer, evaluation record without the image)."""
    word = WORDS[digit]
    if task == "digit-caption":
        return (
            "Describe the image.",
            f"a handwritten {word}",
            {"references": [f"a handwritten {word}", f"the digit {word} written by hand"]},
        )
    if task == "digit-vqa":
        question = "What digit is written?"
        return question, word, {"question": question, "answers": [word] * 8 + [str(digit), "unanswerable"]}
    if task == "digit-parity":
        question, answer = "Is the digit even or odd?", "even" if digit % 2 == 0 else "odd"
        return question, answer, {"question": question, "answer": answer}
    if task == "digit-next":
        question, answer = "Which digit comes after this one?", WORDS[(digit + 1) % 10]
        return question, answer, {"question": question, "answer": answer}
    choices = sorted(rng.sample([w for w in WORDS if w != word], 3) + [word])
    question = "Which digit is written?"
    return (
        question,
        "ABCD"[choices.index(word)],
        {"question": question, "choices": choices, "answer": choices.index(word)},
    )


TASKS = {
    "digit-caption": "caption",
    "digit-vqa": "vqa10",
    "digit-parity": "short",
    "digit-choice": "choice",
    "digit-next": "short",
}
PROMPTS = {
    "digit-caption": "Describe the image.",
    "digit-vqa": "{question}",
    "digit-parity": "{question}",
    "digit-choice": "{question}\n{choices}",
    "digit-next": "{question}",
}


def write_sequence(root: Path, seed: int = 0) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    registry = []
    for task, family in TASKS.items():
        rng = random.Random(f"{seed}-{task}")
        picks = rng.sample(range(len(digits.target)), TRAIN + TEST)  # the same domain, other scans per task
        (root / task / "images").mkdir(parents=True, exist_ok=True)
        train, test = [], []
        for n, index in enumerate(picks):
            image = f"{task}/images/{n:04d}.png"
            _image(digits.images[index]).save(root / image)
            question, answer, record = _item(task, int(digits.target[index]), rng)
            if n < TRAIN:
                train.append(
                    {
                        "id": f"{task}-{n}",
                        "image": image,
                        "conversations": [
                            {"from": "human", "value": f"<image>\n{question}"},
                            {"from": "gpt", "value": answer},
                        ],
                    }
                )
            else:
                test.append({"image": image, **record})
        (root / task / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
        if family == "caption":
            document = {
                "images": [{"id": i, "file_name": r["image"]} for i, r in enumerate(test)],
                "annotations": [{"image_id": i, "caption": c} for i, r in enumerate(test) for c in r["references"]],
            }
            (root / task / "test.json").write_text(json.dumps(document))
            evaluation = f"{task}/test.json"
        else:
            (root / task / "test.jsonl").write_text(
                "".join(json.dumps({"question_id": i, **r}) + "\n" for i, r in enumerate(test))
            )
            evaluation = f"{task}/test.jsonl"
        registry.append(
            {
                "name": task,
                "family": family,
                "train": f"{task}/train.jsonl",
                "eval": evaluation,
                "prompt": PROMPTS[task],
                "max_new_tokens": 12,
            }
        )
    (root / "tasks.json").write_text(json.dumps({"tasks": registry}, indent=2) + "\n")


def main() -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from second_expert import measure, report

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, required=True, help="a base model folder (the demo's tiny base)")
    parser.add_argument("--out", type=Path, default=Path("digits-bench"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if not (args.out / "data" / "tasks.json").is_file():
        write_sequence(args.out / "data")
    workspace = args.out / "workspace"
    create_workspace(workspace, model=args.base, data=args.out / "data", stages=STAGE_DEFAULTS, overwrite=True)
    run_pipeline(Project.open(workspace), methods=("dmole",))
    report(measure(workspace), args.json)


if __name__ == "__main__":
    main()
