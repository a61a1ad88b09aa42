"""dmole's field graders against the field's own scoring scripts, on one shared set of replies.

    python bench/field_graders_agreement.py --coin COIN --mcitlib MCITLIB_METHOD [--out result.json]

COIN is a checkout of zackschen/CoIN (its ETrain/Eval/LLaVA/CoIN/ is used); MCITLIB_METHOD one method folder of a
Ghy0501/MCITlib checkout (e.g. LoRA-FT; its llava/eval/CoIN/ is used). Each reply of CASES is written in the
script's own file layout and scored by running the unmodified script (runpy, as ``python -m`` would, one reply
per run so that each score is read exactly from the "Accuracy" it prints, or from the JSON it writes), then by
the dmole rule of the same name (stages/metrics/field_graders.py). The imports a scoring path never calls
(openai, nltk) are stubbed, and SPICE, which MCITlib's caption average leaves out and which downloads Stanford
models, returns 0. MCITlib's caption average is read at full precision from the COCOEvalCap object the script
builds, and compared both with java (PTB + meteor-1.5.jar) and with the Java-free stand-ins.
docs/metrics.md quotes the run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import runpy
import sys
import tempfile
import types
from pathlib import Path

from dmole.stages.metrics.field_graders import score_rule

CHOICES = ["cat", "dog", "bird"]
GOLD_BOX = "[0.1, 0.2, 0.5, 0.6]"
TEXTVQA_ANSWERS = ["two"] * 4 + ["2"] * 2 + ["three"] * 3 + ["a dog"]
# rule -> [(reply, sample)]; the sample holds the fields the rule's script reads
CASES = {
    "coin-scienceqa": [
        (r, {"choices": CHOICES, "answer": 1})
        for r in ["B", "B. dog", "A", "The answer is B", "I think B", "b", "D", "(B)", "", "B.dog", "C. cat"]
    ],
    "coin-textvqa": [
        (r, {"answers": TEXTVQA_ANSWERS})
        for r in ["two", "Two.", "2", "three", "A dog", "dog", "the two", "4", "two!", "", "II"]
    ]
    + [(". ".join("a" * 40), {"answers": ["a" * 40] * 10})],  # 39 periods: m4c deletes 32 of them
    "coin-imagenet": [
        (r, {"answer": "golden retriever"})
        for r in ["golden retriever", "a golden retriever", "Golden retriever", "retriever", "", "dog"]
    ],
    "coin-gqa": [(r, {"answer": "left"}) for r in ["left", "Left.", "left..", "on the left", "LEFT", "right"]],
    "coin-vizwiz": [(r, {"answer": "unanswerable"}) for r in ["Unanswerable", "unanswerable.", " unanswerable"]],
    "coin-vqav2": [(r, {"answer": "yes"}) for r in ["Yes", "yes", "no", "yes "]],
    "coin-grounding": [
        (r, {"answer_bbox": GOLD_BOX, "size": [640, 480]})
        for r in [
            "[0.1, 0.2, 0.5, 0.6]",
            "[0.12, 0.22, 0.5, 0.55]",
            "[0.1, 0.2, 0.5, 0.61]",
            "[0.1, 0.2, 0.5, 0.35]",
            "[[0.1, 0.2, 0.5, 0.6]]",
            "0.1, 0.2, 0.5, 0.6",
            "[0.1, 0.2, 0.5]",
            "no box",
            "[0.3, 0.3, 0.9, 0.9]",
        ]
    ],
    "coin-ocrvqa": [(r, {"answer": "The Hobbit"}) for r in ["the hobbit", "The Hobbit", "Unanswerable", "Hobbit"]],
    "mcitlib-exact": [
        (r, {"answer": "golden retriever"})
        for r in ["golden retriever", "Golden Retriever", "golden retriever.", " golden retriever", "retriever"]
    ],
    "mcitlib-ai2d": [
        (r, {"answer": a})
        for r, a in [
            ("the answer is b.", "B"),
            ("abc", "B"),
            ("the cab", "B"),
            ("river bank here", "river bank"),
            ("Unanswerable b", "b"),
            ("b, c", "b"),
            ("3.5", "3.5"),
        ]
    ],
    "mcitlib-pvqa": [
        (r, {"answer": a}) for r, a in [("Yes, there is", "yes"), ("no", "yes"), ("Unanswerable yes", "yes")]
    ],
    "mcitlib-sci": [
        (r, {"answer": a, "image": img, "prompt": q})
        for r, a, img, q in [
            ("texas,ohio", "texas,ohio,utah", "MapQA_1.png", "Which states are red?"),
            ("b", "B", "imgs/AI2D_7.png", "q"),
            ("it is b", "B", "imgs/AI2D_7.png", "q"),
            ("it is b", "b", "imgs/MapQA_7.png", "q"),
            ("Unanswerable", "x", "MapQA_1.png", "q"),
        ]
    ],
    "mcitlib-finvis": [(r, {"answer": a}) for r, a in [("A.", "a"), ("a b", "ab"), ("True", "true"), ("B", "a")]],
}
CAPTIONS = [  # (prediction, references): MCITlib's caption average over the whole set
    (
        "A man is surfing on a big wave.",
        ["A man riding a wave on top of a surfboard.", "A surfer rides a large wave in the ocean."],
    ),
    (
        "Two dogs playing with a frisbee on the grass.",
        ["Two dogs play with a frisbee in the grass.", "A pair of dogs playing in a park."],
    ),
    ("A plate of rice and broccoli.", ["A plate of food with broccoli and rice.", "Food on a white plate, with rice."]),
    (
        "A red bus driving down a street.",
        ["A red double-decker bus on a city street.", "A bus drives down the road past buildings."],
    ),
    ("a cat laying on a keyboard", ["A cat sleeping on a laptop keyboard.", "The cat is lying on the computer."]),
    (
        "A kitchen with people standing in it.",
        ["People standing around a kitchen island.", "A group of people in a kitchen."],
    ),
    (
        "A woman holding an umbrella in the rain.",
        ["A woman walks in the rain with an umbrella.", "A person holding a black umbrella on a wet street."],
    ),
    (
        "A train on the tracks at a station.",
        ["A passenger train pulls into the station.", "A train stopped at a platform."],
    ),
]


def _stub_modules() -> None:
    """Modules the scoring paths import but never call."""
    openai = types.ModuleType("openai")
    openai.OpenAI = None
    nltk = types.ModuleType("nltk")
    translate = types.ModuleType("nltk.translate")
    bleu = types.ModuleType("nltk.translate.bleu_score")
    bleu.sentence_bleu, bleu.SmoothingFunction = None, None
    meteor = types.ModuleType("nltk.translate.meteor_score")
    meteor.meteor_score = None
    sys.modules.update(
        {
            "openai": openai,
            "nltk": nltk,
            "nltk.translate": translate,
            "nltk.translate.bleu_score": bleu,
            "nltk.translate.meteor_score": meteor,
        }
    )


def _run(script: Path, argv: list[str], cwd: Path) -> dict:
    """Run a script as __main__ in ``cwd`` with ``argv``, its printing swallowed; its globals."""
    old_argv, old_cwd = sys.argv, os.getcwd()
    sys.argv = [str(script), *argv]
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = old_argv
        os.chdir(old_cwd)


def _accuracy(path: Path, label: str = "Accuracy") -> float:
    """The first "<label>: X%" in a Result.text (eval_gqa.py writes its lines without newlines), as 0-1."""
    return float(re.search(rf"(?:^|[^A-Za-z]){label}: ([0-9.]+)%", path.read_text()).group(1)) / 100


def _write(path: Path, value) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(v) + "\n" for v in value))
    else:
        path.write_text(json.dumps(value))
    return path


def original(rule: str, reply: str, sample: dict, coin: Path, mcitlib: Path, work: Path) -> float:
    """The script's score (0-1) of one reply."""
    scripts = coin / "ETrain/Eval/LLaVA/CoIN"
    out = work / "out"
    out.mkdir(parents=True, exist_ok=True)
    result = [{"question_id": 1, "text": reply, "prompt": sample.get("prompt", "q")}]
    if rule == "coin-scienceqa":
        _write(work / "sqa/pid_splits.json", {"test": ["1"]})
        _write(work / "sqa/problems.json", {"1": {"choices": sample["choices"], "answer": sample["answer"]}})
        _write(work / "res.jsonl", [{**result[0], "question_id": "1"}])
        _run(
            scripts / "eval_science_qa.py",
            [
                "--base-dir",
                str(work / "sqa"),
                "--result-file",
                str(work / "res.jsonl"),
                "--output-file",
                str(out / "o.json"),
                "--output-result",
                str(out / "r.json"),
            ],
            work,
        )
        return json.loads((out / "r.json").read_text())["acc"] / 100
    if rule == "coin-textvqa":  # the evaluator the script calls, read at full precision
        from ETrain.Eval.LLaVA.CoIN.m4c_evaluator import TextVQAAccuracyEvaluator

        with contextlib.redirect_stderr(io.StringIO()):
            return TextVQAAccuracyEvaluator().eval_pred_list([{"pred_answer": reply, "gt_answers": sample["answers"]}])
    if rule == "coin-imagenet":
        _write(work / "test.json", [{"answer": sample["answer"]}])
        _run(
            scripts / "eval_ImagetNet.py",
            [
                "--test-file",
                str(work / "test.json"),
                "--result-file",
                str(_write(work / "res.jsonl", result)),
                "--output-dir",
                str(out),
            ],
            work,
        )
        return _accuracy(out / "Result.text")
    if rule == "coin-gqa":
        _write(
            work / "cl_dataset/GQA/testdev_balanced_questions.json",
            {
                "1": {
                    "answer": sample["answer"],
                    "isBalanced": True,
                    "question": "which side?",
                    "semantic": [],
                    "types": {"structural": "query", "semantic": "rel"},
                    "groups": {"global": "side"},
                }
            },
        )
        _run(
            scripts / "convert_gqa_for_eval.py",
            [
                "--src",
                str(_write(work / "res.jsonl", [{**result[0], "question_id": "1"}])),
                "--dst",
                str(out / "testdev_balanced_predictions.json"),
            ],
            work,
        )
        _run(
            scripts / "eval_gqa.py", ["--tier", "testdev_balanced", "--path", str(out), "--output-dir", str(out)], work
        )
        return _accuracy(out / "Result.text")
    if rule in ("coin-vizwiz", "coin-vqav2", "coin-ocrvqa", "coin-grounding"):
        name = {
            "coin-vizwiz": "eval_vizwiz.py",
            "coin-vqav2": "eval_vqav2.py",
            "coin-ocrvqa": "eval_ocrvqa.py",
            "coin-grounding": "eval_grounding.py",
        }[rule]
        flag = "--test-file" if rule == "coin-grounding" else "--annotation-file"
        _write(work / "ann.json", [{"question_id": 1, **sample}])
        _run(
            scripts / name,
            [
                flag,
                str(work / "ann.json"),
                "--result-file",
                str(_write(work / "res.jsonl", result)),
                "--output-dir",
                str(out),
            ],
            work,
        )
        return _accuracy(out / "Result.text")
    name = {
        "mcitlib-exact": "eval_deepseek_r1.py",
        "mcitlib-ai2d": "eval_ai2d.py",
        "mcitlib-pvqa": "eval_pvqa.py",
        "mcitlib-sci": "eval_sci.py",
        "mcitlib-finvis": "eval_finvis.py",
    }[rule]
    _write(work / "ann.json", [{"question_id": 1, "image": sample.get("image", "x.png"), **sample}])
    _run(
        mcitlib / "llava/eval/CoIN" / name,
        [
            "--annotation-file",
            str(work / "ann.json"),
            "--result-file",
            str(_write(work / "res.jsonl", result)),
            "--output-dir",
            str(out),
        ],
        work,
    )
    lines = (out / "Result.json").read_text().split("\n") if (out / "Result.json").is_file() else []
    scored = [json.loads(line) for line in lines if line.strip()]  # JSON lines, one per reply it did not skip
    if len(scored) == 1 and "score" in scored[0]:
        return float(scored[0]["score"])  # the unrounded per-reply score, where the script writes one
    return _accuracy(out / "Result.text")


def original_caption(mcitlib: Path, work: Path) -> dict[str, float]:
    """MCITlib's eval_caption.py on CAPTIONS: the seven metrics × 100 from the COCOEvalCap it builds."""
    import pycocoevalcap.eval as coco_eval_module

    built = []

    class Recorded(coco_eval_module.COCOEvalCap):
        def evaluate(self):
            super().evaluate()
            built.append(self)

    class NoSpice:
        def compute_score(self, gts, _res):
            return 0.0, [0.0] * len(gts)

        def method(self):
            return "SPICE"

    coco_eval_module.COCOEvalCap, coco_eval_module.Spice = Recorded, NoSpice
    _write(
        work / "val.json",
        {
            "images": [{"id": i + 1} for i in range(len(CAPTIONS))],
            "annotations": [
                {"image_id": i + 1, "id": 100 * i + k, "caption": ref}
                for i, (_, refs) in enumerate(CAPTIONS)
                for k, ref in enumerate(refs)
            ],
        },
    )
    _write(work / "res.jsonl", [{"question_id": i, "text": pred} for i, (pred, _) in enumerate(CAPTIONS)])
    (work / "out").mkdir(exist_ok=True)
    _run(
        mcitlib / "llava/eval/CoIN/eval_caption.py",
        [
            "--annotation-file",
            str(work / "val.json"),
            "--result-file",
            str(work / "res.jsonl"),
            "--output-dir",
            str(work / "out"),
        ],
        work,
    )
    return {m: 100 * s for m, s in built[0].eval.items() if m != "SPICE"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coin", type=Path, required=True)
    parser.add_argument("--mcitlib", type=Path, required=True)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    coin, mcitlib = args.coin.resolve(), args.mcitlib.resolve()
    _stub_modules()
    sys.path.insert(0, str(coin))
    report = {"rules": {}}
    for rule, cases in CASES.items():
        rows = []
        for reply, sample in cases:
            with tempfile.TemporaryDirectory() as tmp:
                theirs = original(rule, reply, sample, coin, mcitlib, Path(tmp))
            ours = score_rule(rule, [reply], [sample])[0] / 100
            rows.append({"reply": reply, "original": theirs, "dmole": ours})
        worst = max(abs(r["original"] - r["dmole"]) for r in rows)
        report["rules"][rule] = {
            "replies": len(rows),
            "largest_difference": worst,
            "disagreements": [r for r in rows if abs(r["original"] - r["dmole"]) > 1e-9],
        }
        print(f"{rule:16s} {len(rows):3d} replies, largest |original - dmole| = {worst:.2e}")
    with tempfile.TemporaryDirectory() as tmp:
        theirs = original_caption(mcitlib, Path(tmp))
    preds, refs = [p for p, _ in CAPTIONS], [r for _, r in CAPTIONS]
    from dmole.stages.metrics.mcitlib_rules import caption

    ours = {}
    for name, (tokenizer, meteor) in {"java": ("ptb", "java"), "java-free": ("ptb-python", "python")}.items():
        average, _, metrics = caption(preds, refs, tokenizer=tokenizer, meteor=meteor)
        ours[name] = {"average": average, "metrics": metrics}
    average = sum(theirs.values()) / len(theirs)
    report["caption"] = {"original": {"average": average, "metrics": theirs}, "dmole": ours}
    for name in ours:
        print(
            f"mcitlib-caption  {name:9s} average {ours[name]['average']:.6f} vs original {average:.6f} "
            f"(difference {ours[name]['average'] - average:+.2e}; METEOR "
            f"{ours[name]['metrics']['METEOR'] - theirs['METEOR']:+.3f})"
        )
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
