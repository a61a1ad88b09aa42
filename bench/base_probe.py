"""What a base model perceives: its answers to the synthetic pre-training questions (name the shape, say where,
name the colour) on fresh scenes in every style, scored by exact match.

    python bench/base_probe.py --base dmole-demo/base-model [--scenes 96] [--json FILE]

The scenes are drawn with their own seed, so none was seen in pre-training.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from dmole.stages.data.synthetic import STYLES, draw_scene, random_scene
from dmole.stages.evaluation.predict import generate_batch
from dmole.stages.models.registry import load_family
from emit import emit

QUESTIONS = {
    "Name the shape.": lambda s: s.shape,
    "Where is the object?": lambda s: s.position_name,
    "What color is the object?": lambda s: s.color,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("--scenes", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    adapter = load_family(args.base)
    size = adapter.model.config.vision_config.image_size
    rng = random.Random("base-probe")
    scenes = [random_scene(rng, rng.choice(STYLES)) for _ in range(args.scenes)]
    images = [draw_scene(scene, size, rng) for scene in scenes]
    accuracy = {}
    for question, truth in QUESTIONS.items():
        replies = []
        for start in range(0, len(images), args.batch_size):
            chunk = images[start : start + args.batch_size]
            replies += generate_batch(adapter, adapter.model, chunk, [question] * len(chunk), max_new_tokens=16)
        accuracy[question] = sum(r.strip(". ") == truth(s) for r, s in zip(replies, scenes)) / len(scenes)
    emit({"base": str(args.base), "scenes": args.scenes, "accuracy": accuracy}, args.json)


if __name__ == "__main__":
    main()
