"""The field's graders (stages/metrics/field_graders.py, mcitlib_rules.py, coin_rules.py, coco_caption.py,
meteor_python.py): hand-worked rules, and MCITlib's caption average against pycocoevalcap's own COCOEvalCap run
the way MCITlib's eval_caption.py runs it."""

import json
import shutil

import pytest

from dmole.stages.metrics import MetricError, coin_rules, mcitlib_rules
from dmole.stages.metrics.field_graders import caption_backends, rule_for, score_rule
from dmole.stages.metrics.meteor_python import ALPHA, BETA, DELTA, GAMMA, meteor_python, segment_stats

JAVA = shutil.which("java") is not None
needs_java = pytest.mark.skipif(not JAVA, reason="java is not on PATH: the PTB tokenizer and meteor-1.5.jar need it")

# A shared prediction set: references as a COCO annotation file would hold them, one prediction per image.
REFERENCES = [
    ["A man riding a wave on top of a surfboard.", "A surfer rides a large wave in the ocean."],
    ["Two dogs play with a frisbee in the grass.", "A pair of dogs playing in a park."],
    ["A plate of food with broccoli and rice.", "Food on a white plate, with rice."],
    ["A red double-decker bus on a city street.", "A bus drives down the road past buildings."],
    ["A cat sleeping on a laptop keyboard.", "The cat is lying on the computer."],
    ["People standing around a kitchen island.", "A group of people in a kitchen."],
]
PREDICTIONS = [
    "A man is surfing on a big wave.",
    "Two dogs playing with a frisbee on the grass.",
    "A plate of rice and broccoli.",
    "A red bus driving down a street.",
    "a cat laying on a keyboard",
    "A kitchen with people standing in it.",
]


# ------------------------------------------------------------------ MCITlib's caption average, against COCOEvalCap
@pytest.mark.slow  # 40 s: COCOEvalCap runs the METEOR jar; bench/field_graders_agreement.py measures it too
@needs_java
def test_mcitlib_caption_equals_cocoevalcap_as_eval_caption_runs_it(tmp_path, monkeypatch):
    pycocotools_coco = pytest.importorskip("pycocotools.coco", reason="pycocotools (the dev extra) is not installed")
    import pycocoevalcap.eval as coco_eval_module

    class NoSpice:  # SPICE downloads Stanford models; eval_caption.py leaves it out of the average anyway
        def compute_score(self, gts, _res):
            return 0.0, [0.0] * len(gts)

        def method(self):
            return "SPICE"

    monkeypatch.setattr(coco_eval_module, "Spice", NoSpice)
    annotations = {
        "images": [{"id": i + 1} for i in range(len(REFERENCES))],
        "annotations": [
            {"image_id": i + 1, "id": 10 * i + k, "caption": c}
            for i, refs in enumerate(REFERENCES)
            for k, c in enumerate(refs)
        ],
    }
    (tmp_path / "val.json").write_text(json.dumps(annotations))
    # eval_caption.py numbers the replies 1, 2, ... in file order and loads them as COCO results
    (tmp_path / "pred.json").write_text(
        json.dumps([{"image_id": i + 1, "caption": p} for i, p in enumerate(PREDICTIONS)])
    )
    coco = pycocotools_coco.COCO(str(tmp_path / "val.json"))
    evaluator = coco_eval_module.COCOEvalCap(coco, coco.loadRes(str(tmp_path / "pred.json")))
    evaluator.evaluate()
    shown = {
        m: 100.0 * s
        for m, s in evaluator.eval.items()
        if m in ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")
    }
    expected = sum(shown.values()) / len(shown)

    score, per_sample, metrics = mcitlib_rules.caption(PREDICTIONS, REFERENCES, tokenizer="ptb", meteor="java")
    assert score == pytest.approx(expected, abs=1e-6)
    assert metrics == pytest.approx(shown, abs=1e-6)
    assert len(shown) == 7 and len(per_sample) == len(PREDICTIONS)


# ------------------------------------------------------------------ the Java-free METEOR
def _meteor_by_hand(h_content, h_function, r_content, r_function, m_content, m_function, chunks, stem=(0, 0)):
    """Meteor 1.5's formula written out for one segment; stem = (content, function) stem matches (weight 0.6)."""

    def weighted(content, function):
        return DELTA * content + (1 - DELTA) * function

    matched = weighted(m_content, m_function) + 0.6 * weighted(*stem)
    p, r = matched / weighted(h_content, h_function), matched / weighted(r_content, r_function)
    fmean = p * r / (ALPHA * p + (1 - ALPHA) * r)
    matches = m_content + m_function + sum(stem)
    whole = matches == h_content + h_function == r_content + r_function and chunks == 1
    return fmean * (1 - (0 if whole else GAMMA * (chunks / matches) ** BETA))


@pytest.mark.parametrize(
    "hyp, ref, counts",
    [
        ("red car", "a red car", (2, 0, 2, 1, 2, 0, 1)),  # "a" is a function word
        ("car red", "a red car", (2, 0, 2, 1, 2, 0, 2)),  # two chunks
        ("the cat sat on the mat", "the cat sat on the mat", (3, 3, 3, 3, 3, 3, 1)),  # whole: no penalty
        ("a man on a horse", "a man on a horse near the beach", (2, 3, 4, 4, 2, 3, 1)),  # "near" is content
    ],
)
def test_meteor_python_by_hand(hyp, ref, counts):
    assert segment_stats(hyp, ref).score() == pytest.approx(_meteor_by_hand(*counts))


def test_meteor_python_stem_module():
    # dogs~dog, playing~plays: stems match with weight 0.6; "two"/"a" differ; "in the grass" matches exactly
    assert segment_stats("two dogs playing in the grass", "a dog plays in the grass").score() == pytest.approx(
        _meteor_by_hand(3, 3, 3, 3, 1, 2, 1, stem=(2, 0))
    )


def test_meteor_python_synonym_module():
    from dmole.stages.metrics.meteor_synonyms import are_synonyms

    assert are_synonyms("couch", "sofa") and are_synonyms("big", "large") and not are_synonyms("dog", "dog")
    assert are_synonyms("couches", "sofa")  # a plural's base form (WordNet's detachment rules) carries its synsets
    # big~large and couch~sofa at weight 0.8, all six words in one chunk: no fragmentation penalty
    got = segment_stats("a big dog on a couch", "a large dog on a sofa").score()
    assert got == pytest.approx(_meteor_synonyms_by_hand())


def _meteor_synonyms_by_hand() -> float:
    matched = DELTA * 1 + 0.8 * DELTA * 2 + (1 - DELTA) * 3  # dog exact, big/couch synonyms, a/on/a function words
    length = DELTA * 3 + (1 - DELTA) * 3
    p = r = matched / length
    return p * r / (ALPHA * p + (1 - ALPHA) * r)


def test_meteor_python_corpus_sums_statistics():
    score, scores = meteor_python(["red car", "car red"], [["a red car"], ["a blue truck", "a red car"]])
    assert scores == pytest.approx([_meteor_by_hand(2, 0, 2, 1, 2, 0, 1), _meteor_by_hand(2, 0, 2, 1, 2, 0, 2)])
    # corpus: 4 words each side of 6 reference words, 4 matches in 3 chunks
    assert score == pytest.approx(_meteor_by_hand(4, 0, 4, 2, 4, 0, 3))
    # a segment matched whole adds its matches but no chunk: 2 + 2 content matches in 1 chunk
    score, _ = meteor_python(["red car", "blue car"], [["a red car"], ["blue car"]])
    assert score == pytest.approx(_meteor_by_hand(4, 0, 4, 1, 4, 0, 1))


@needs_java
def test_meteor_python_equals_the_jar_where_exact_stem_and_synonym_matches_are_all():
    from pycocoevalcap.meteor.meteor import Meteor

    pairs = [
        ("red car", "a red car"),
        ("car red", "a red car"),
        ("a man on a horse", "a man on a horse near the beach"),
        ("two dogs playing in the grass", "a dog plays in the grass"),
        ("a big dog on a couch", "a large dog on a sofa"),
    ]
    jar = Meteor().compute_score(
        {i: [ref] for i, (_, ref) in enumerate(pairs)}, {i: [hyp] for i, (hyp, _) in enumerate(pairs)}
    )
    python = meteor_python([hyp for hyp, _ in pairs], [[ref] for _, ref in pairs])
    assert python[1] == pytest.approx(jar[1], abs=1e-6)
    assert python[0] == pytest.approx(jar[0], abs=1e-6)


def test_without_java_the_caption_rule_says_so_and_runs_in_python(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    tokenizer, meteor, notice = caption_backends()
    assert (tokenizer, meteor) == ("ptb-python", "python") and "java" in notice
    score, per_sample, _ = score_rule("mcitlib-caption", PREDICTIONS, [{"references": r} for r in REFERENCES])
    assert 0 < score < 100 and len(per_sample) == len(PREDICTIONS)
    with pytest.raises(MetricError, match="java"):
        mcitlib_rules.caption(PREDICTIONS, REFERENCES, tokenizer="ptb-python", meteor="java")


# ------------------------------------------------------------------ MCITlib's QA rules
def test_mcitlib_exact_is_the_whole_reply_case_insensitive():
    assert mcitlib_rules.exact("Golden Retriever", "golden retriever") == 1
    assert mcitlib_rules.exact("golden retriever.", "golden retriever") == 0  # nothing stripped
    assert mcitlib_rules.exact(" B", "B") == 0
    assert mcitlib_rules.exact("straße", "STRASSE") == 1  # str.upper, as the script


def test_mcitlib_dcl_rules():
    assert mcitlib_rules.ai2d("the answer is b.", "B") == 1  # one word: "b." in a reply with spaces
    assert mcitlib_rules.ai2d("abc", "B") == 1  # one word, reply without spaces: containment
    assert mcitlib_rules.ai2d("the cab", "B") == 0
    assert mcitlib_rules.ai2d("it is a river bank", "river bank") == 1
    assert mcitlib_rules.ai2d("Unanswerable, b", "b") == 0
    assert mcitlib_rules.pvqa("Yes, there is", "yes") == 1
    assert mcitlib_rules.finvis("A.", "a") == 1 and mcitlib_rules.finvis("a b", "ab") == 1
    assert mcitlib_rules.sci("texas,ohio", "Texas,Ohio,Utah", "MapQA_1.png", "Which states ...") == pytest.approx(2 / 3)
    assert mcitlib_rules.sci("b", "B", "images/AI2D_7.png", "") == 1
    assert mcitlib_rules.sci("it is b", "B", "images/AI2D_7.png", "") == 0
    assert mcitlib_rules.sci("it is b", "B", "images/MapQA_7.png", "") == 1


# ------------------------------------------------------------------ CoIN's rules
@pytest.mark.parametrize(
    "reply, letter",
    [
        ("B", "B"),
        ("C. a cat", "C"),
        ("The answer is D", "D"),
        ("I think A", "I"),
        ("no letter here", "FAILED"),
        ("b", "B"),
    ],
)
def test_coin_scienceqa_letter(reply, letter):
    assert coin_rules.scienceqa_letter(reply) == letter


def test_coin_scienceqa_scores_against_the_gold_index():
    assert coin_rules.scienceqa("C. a cat", ["x", "y", "z"], 2) == 1
    assert coin_rules.scienceqa("D", ["x", "y", "z"], 2) == 0  # D is not among three options
    assert coin_rules.scienceqa("I think C", ["x", "y", "z"], 2) == 0


def test_coin_textvqa_deletes_only_32_periods():
    answers = ["a" * 40] * 10
    dotted = ". ".join("a" * 40)  # 39 periods, each followed by a space: deleted one by one, 32 at most
    assert coin_rules.textvqa("a" * 40, answers) == 1
    assert coin_rules.textvqa(dotted, [dotted] * 10) == 1
    assert coin_rules.textvqa(dotted, answers) == 0  # dmole's own rule deletes all 39, CoIN's leaves 7 periods
    with pytest.raises(MetricError):
        coin_rules.textvqa("x", ["x"] * 9)


def test_coin_textvqa_soft_accuracy():
    assert coin_rules.textvqa("two", ["2"] * 2 + ["3"] * 8) == pytest.approx((2 * 1 / 3 + 8 * 2 / 3) / 10)


def test_coin_imagenet_gqa_vizwiz_ocrvqa():
    assert coin_rules.imagenet("a golden retriever", "golden retriever") == 1
    assert coin_rules.imagenet("Golden retriever", "golden retriever") == 0  # case counts
    assert coin_rules.imagenet("", "golden retriever") == 1  # "" is in every label
    assert coin_rules.gqa("Left.", "left") == 1 and coin_rules.gqa("left side", "left") == 0
    assert coin_rules.upper_exact("Yes", "yes") == 1
    assert coin_rules.ocrvqa("Unanswerable", "unanswerable") == 0
    assert coin_rules.ocrvqa("The Hobbit", "the hobbit") == 1


def test_coin_grounding_reads_boxes_as_its_script_does():
    assert coin_rules.grounding_box("[0.12, 0.34, 0.56, 0.78]") == [0.12, 0.34, 0.56, 0.7]
    assert coin_rules.grounding_box("x[0.1, 0.2, 0.3, 0.4]y") == [0.1, 0.2, 0.3, 0.4]
    assert coin_rules.grounding_box("[0.1, 0.2, 0.3]") is None
    assert coin_rules.grounding_box("no box") is None
    # gold 0..0.5 square; reply read as 0, 0, 0.5, 0.4: IoU 0.8
    assert coin_rules.grounding("[0.0, 0.0, 0.5, 0.45]", "[0.0, 0.0, 0.5, 0.5]", [640, 480]) == 1
    # read as 0, 0, 0.5, 0.2: IoU 0.4
    assert coin_rules.grounding("[0.0, 0.0, 0.5, 0.25]", "[0.0, 0.0, 0.5, 0.5]") == 0


# ------------------------------------------------------------------ the registry
def test_rule_for_by_task_then_family():
    assert rule_for("mcitlib", "caption", "Flickr30k") == "mcitlib-caption"
    assert rule_for("mcitlib", "short", "ImageNet-R") == "mcitlib-exact"
    assert rule_for("mcitlib", "choice") == "mcitlib-exact"
    assert rule_for("coin", "short", "ImageNet") == "coin-imagenet"
    assert rule_for("coin", "vqa10") == "coin-textvqa"
    assert rule_for("dmole", "vqa10") == "dmole-vqa10"
    with pytest.raises(MetricError, match="no rule"):
        rule_for("coin", "caption")
    with pytest.raises(MetricError, match="unknown grader"):
        rule_for("lmms", "caption")


def test_score_rule_on_dmole_samples():
    # a dmole choice sample holds the gold index; MCITlib's files hold the letter
    score, per_sample, parsed = score_rule("mcitlib-exact", ["b", "A"], [{"choices": ["x", "y"], "answer": 1}] * 2)
    assert (score, per_sample, parsed) == (50.0, [100.0, 0.0], ["b", "A"])
    # CoIN's ScienceQA files hold the gold index, as dmole's choice samples do
    assert score_rule("coin-scienceqa", ["B", "b. y"], [{"choices": ["x", "y"], "answer": 1}] * 2)[1] == [100.0] * 2
    score, per_sample, parsed = score_rule("dmole-short", ["Paris "], [{"answer": "paris"}])
    assert score == 100.0
    with pytest.raises(MetricError, match="answer_bbox"):
        score_rule("coin-grounding", ["[0, 0, 1, 1]"], [{"bbox": [0, 0, 1, 1]}])
