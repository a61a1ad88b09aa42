"""Hand-computed cases for dmole.stages.metrics (spec §10 and §11)."""

import shutil

import pytest

from dmole.stages.metrics import MetricError
from dmole.stages.metrics.caption import (
    cider_d,
    ptb_tokenize,
    resolve_caption_tokenizer,
    simple_tokenize,
    tokenize_captions,
)
from dmole.stages.metrics.choice import choice_accuracy, format_choices, option_letters, parse_choice
from dmole.stages.metrics.continual import continual_metrics
from dmole.stages.metrics.families import score_family
from dmole.stages.metrics.grounding import format_box, grounding_hit, iou, parse_box, to_pixels
from dmole.stages.metrics.ptb_python import ptb_python_tokenize
from dmole.stages.metrics.short import exact_match
from dmole.stages.metrics.vqa import normalize_vqa_answer, vqa_soft_accuracy

# ---------------------------------------------------------------- captions


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("The dog's ball isn't red.", "the dog 's ball is n't red"),
        ("They're here; we've gone! I'll go, I'd say: I'm", "they 're here we 've gone i 'll go i 'd say i 'm"),
        ("It costs 3.5 dollars... (really)", "it costs 3.5 dollars really"),
        ("version 3.5.", "version 3.5"),
        ("a - b -- c ... d ' e", "a b c d e"),
        ('"Hi" [x] {y} `z` a?b', "hi x y z a b"),
        ("", ""),
    ],
)
def test_simple_tokenize(text, tokens):
    assert simple_tokenize(text) == tokens


def test_cider_identical_high_disjoint_zero():
    preds = ["A dog runs on the grass.", "a cat sleeps on a sofa", "purple zebra"]
    refs = [["a dog runs on the grass"], ["A cat sleeps on a sofa."], ["a bird flies high"]]
    score, per_sample = cider_d(preds, refs)
    # identical tf-idf vectors: cosine 1 for n = 1..4, no length penalty -> 10 × 100
    assert per_sample == pytest.approx([1000.0, 1000.0, 0.0])
    assert score == pytest.approx(2000.0 / 3)
    assert len(per_sample) == len(preds)


def test_cider_empty_prediction_scores_zero():
    _, per_sample = cider_d(["", "a cat"], [["a dog runs"], ["a cat"]])
    assert per_sample[0] == 0.0


def test_cider_idf_comes_from_the_evaluated_set():
    # one image: every n-gram occurs in every reference "document", so every idf is 0
    score, per_sample = cider_d(["a dog runs"], [["a dog runs"]])
    assert score == 0.0 and per_sample == [0.0]


def test_cider_rejects_bad_input():
    with pytest.raises(MetricError):
        cider_d(["a"], [["a"], ["b"]])
    with pytest.raises(MetricError):
        cider_d(["a"], [[]])
    with pytest.raises(MetricError):
        tokenize_captions(["a"], "nltk")


def test_ptb_tokenize():
    if shutil.which("java") is None:
        pytest.skip("java is not on PATH; the ptb tokenizer needs it")
    assert ptb_tokenize(["A dog's ball.", "", "Hi, there!"]) == ["a dog 's ball", "", "hi there"]


# Captions that exercise each PTB convention ptb-python writes down (abbreviations, initials, times, prices,
# clitics, brackets, quotes, hyphens, slashes, a period with no space after it). Java's PTB reads past the end of
# a caption: a final initial ("a P.") keeps its period when the next caption starts in lower case, so the one
# here is followed by a capitalised caption, as most are.
PTB_CASES = [
    "A street sign stating Water St. with flowers underneath.",
    'Two signs read "Euclid St." and "Park Ave.".',
    "Woman with an I.V. in her arm watching t.v. at 11:43 p.m.",
    "A clock shows 4:07, the time is about 11:20.",
    "Bottles of S. Pellegrino cost $3.69 (two for $5).",
    "Barry Bonds #25 at bat; fans look on...",
    "A dog's ball isn't theirs, it can't be, they cannot say.",
    "The photographers' reflection on a 'Stop' sign",
    "A t-shirt, a half-eaten stir-fry and a black/white cat at 1/2 past.",
    "A train on the track.Passengers wait.",
    "A yellow Market Inc. sign, knick-knacks, etc.",
    "A cow in a sheep penn.",
    "They're gonna say we'll go, I'd think I'm right - or -- not",
    "A blue sign with a P.",
    "A man holding an ore.",
    "Bed.+9",
    "A [small] {red} box with “curly” quotes and it’s fine",
    "",
]


def test_ptb_python_writes_down_the_ptb_conventions():
    assert (
        ptb_python_tokenize("Woman with an I.V. watching t.v. at 11:43 p.m. on Water St.")
        == "woman with an i.v. watching t.v. at 11:43 p.m. on water st."
    )
    assert ptb_python_tokenize("A dog's ball isn't there; it cannot be.") == "a dog 's ball is n't there it can not be"
    assert (
        ptb_python_tokenize("Bottles (two) for $3.69, a t-shirt and black/white track.Passengers")
        == "bottles -lrb- two -rrb- for $ 3.69 a t-shirt and black/white track.passengers"
    )
    assert ptb_python_tokenize("A sign with a P.") == "a sign with a p"


def test_ptb_python_tokenizes_as_the_java_ptb_tokenizer():
    if shutil.which("java") is None:
        pytest.skip("java is not on PATH; the ptb tokenizer needs it")
    assert [ptb_python_tokenize(t).split() for t in PTB_CASES] == [t.split() for t in ptb_tokenize(PTB_CASES)]


def test_ptb_else_python_uses_ptb_where_java_is_and_says_when_it_is_not(monkeypatch):
    assert resolve_caption_tokenizer("simple") == ("simple", None)
    monkeypatch.setattr("dmole.stages.metrics.caption.shutil.which", lambda name: "/usr/bin/java")
    assert resolve_caption_tokenizer("ptb-else-python") == ("ptb", None)
    monkeypatch.setattr("dmole.stages.metrics.caption.shutil.which", lambda name: None)
    tokenizer, notice = resolve_caption_tokenizer("ptb-else-python")
    assert tokenizer == "ptb-python" and "java is not on PATH" in notice and "\n" not in notice


def test_ptb_without_java_is_an_error(monkeypatch):
    monkeypatch.setattr("dmole.stages.metrics.caption.shutil.which", lambda name: None)
    with pytest.raises(MetricError, match="needs java on PATH; use --caption-tokenizer ptb-python"):
        cider_d(["a dog"], [["a dog"]], tokenizer="ptb")


# ---------------------------------------------------------------- VQA


@pytest.mark.parametrize(
    ("answer", "normalized"),
    [
        ("Two", "2"),
        ("none", "0"),
        ("the dog.", "dog"),
        ("dont", "don't"),
        ("yes, it is", "yes it is"),
        ("3.5", "3.5"),
        ("e.g. 10.5", "eg 10.5"),
        ("What's that?", "what 's that"),
        ("black/white", "black white"),
        ("black / white", "black white"),
        ("A  Red\tCar\n", "red car"),
        # "-" is judged on the step-2 string "(-1) t-shirt" (no "- " or " -"), so it
        # becomes a space; judging the partly processed " -1 t-shirt" would delete it.
        ("(-1) t-shirt", "1 t shirt"),
    ],
)
def test_normalize_vqa_answer(answer, normalized):
    assert normalize_vqa_answer(answer) == normalized


def _answers(matching: int) -> list[str]:
    return ["Two"] * matching + ["three"] * (10 - matching)


def test_vqa_soft_accuracy_hand_cases():
    assert vqa_soft_accuracy("2", _answers(0)) == 0.0
    # 1 match: 9 subsets keep it (1/3 each), 1 drops it -> 9/10 × 1/3
    assert vqa_soft_accuracy("2", _answers(1)) == 0.3
    # 2 matches: 2 subsets keep one (1/3), 8 keep both (2/3) -> (2 + 16)/30
    assert vqa_soft_accuracy("2", _answers(2)) == 0.6
    # 3 matches: 3 subsets keep two (2/3), 7 keep three (1) -> (6 + 21)/30
    assert vqa_soft_accuracy("2", _answers(3)) == 0.9
    assert vqa_soft_accuracy("two.", _answers(4)) == 1.0


def test_vqa_needs_ten_answers():
    with pytest.raises(MetricError):
        vqa_soft_accuracy("2", ["2"] * 9)


# ---------------------------------------------------------------- short answer


def test_exact_match():
    assert exact_match(" Paris ", "paris") == 1.0
    assert exact_match("Lyon", ["Paris", " LYON"]) == 1.0
    assert exact_match("Paris.", ["Paris"]) == 0.0


# ---------------------------------------------------------------- multiple choice

CHOICES = ["cat", "dog", "bird"]


def test_option_letters_and_format():
    assert option_letters(3) == "ABC"
    assert format_choices(["cat", "dog"]) == "A. cat\nB. dog"
    with pytest.raises(MetricError):
        option_letters(6)


@pytest.mark.parametrize(
    ("reply", "parsed"),
    [
        (" B ", "B"),  # rule 1: one character
        ("x", "x"),  # rule 1 even when it is no option letter
        ("B. dog", "B"),  # rule 2: leading option letter
        ("A dog", "A"),  # rule 2 comes before rule 3
        ("I think it is a dog", "B"),  # rule 3: "I" is not an option letter here
        ("The dog chased the cat", "A"),  # rule 3: first option in letter order
        ("D. bird", "C"),  # D is not one of this sample's letters -> rule 3
        ("no idea", None),  # rule 4
        ("", None),
    ],
)
def test_parse_choice(reply, parsed):
    assert parse_choice(reply, CHOICES) == parsed


def test_parse_choice_uses_this_samples_letters():
    assert parse_choice("D. bird", CHOICES + ["fish"]) == "D"


def test_choice_accuracy():
    assert choice_accuracy("B", CHOICES, 1) == 1.0
    assert choice_accuracy("It is a dog.", CHOICES, 1) == 1.0
    assert choice_accuracy("b", CHOICES, 1) == 0.0  # compared exactly
    assert choice_accuracy("no idea", CHOICES, 1) == 0.0


# ---------------------------------------------------------------- grounding

GOLD = (0.0, 0.0, 100.0, 100.0)  # in a 200 × 100 image


@pytest.mark.parametrize(
    "reply",
    [
        "[[0,0,500,1000]]",  # 0-1000 normalised (sum ≥ 4)
        "[[0, 0, 0.5, 1]]",  # fractions (sum < 4)
        "[0,0,500,1000]",  # missing outer brackets
        "[[[0,0,500,1000]]]",  # extra outer brackets
        "The box is [[0,0,500,1000]]. Also [[1,1,2,2]]",  # the first box counts
    ],
)
def test_grounding_formats(reply):
    assert to_pixels(parse_box(reply), 200, 100) == (0.0, 0.0, 100.0, 100.0)
    assert grounding_hit(reply, GOLD, 200, 100) == 1.0


def test_parse_box_failures():
    assert parse_box("no box here") is None
    assert parse_box("[[a,b,c,d]]") is None
    assert grounding_hit("no box here", GOLD, 200, 100) == 0.0


def test_iou_hand_case():
    assert iou((0, 0, 10, 10), (5, 5, 15, 15)) == pytest.approx(25 / 175)
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0


def test_grounding_threshold_and_degenerate_box():
    assert grounding_hit("[[0,0,500,500]]", GOLD, 200, 100) == 1.0  # IoU exactly 0.5
    assert grounding_hit("[[0,0,500,490]]", GOLD, 200, 100) == 0.0  # IoU 0.49
    assert grounding_hit("[[250,0,250,1000]]", GOLD, 200, 100) == 0.0  # zero width
    assert grounding_hit("[[400,900,100,100]]", GOLD, 200, 100) == 0.0  # inverted


def test_format_box_round_trip():
    text = format_box((40, 30, 120, 90), 200, 100)
    assert text == "[[200,300,600,900]]"
    assert to_pixels(parse_box(text), 200, 100) == pytest.approx((40, 30, 120, 90))


# ---------------------------------------------------------------- continual metrics

WORKED = [[20, 30, 40], [60, 32, 38], [50, 70, 37], [45, 65, 80]]


def test_continual_worked_example():
    m = continual_metrics(WORKED)
    assert m["last"] == pytest.approx(63.333, abs=1e-3)
    assert m["avg_seen"] == pytest.approx(61.111, abs=1e-3)
    assert m["avg_all"] == pytest.approx(53.0)
    assert m["bwt"] == pytest.approx(-10.0)
    assert m["fwt"] == pytest.approx(-0.5)
    per = m["per_task"]
    assert per["last"] == [45, 65, 80]
    assert per["avg_seen"] == pytest.approx([51.667, 67.5, 80], abs=1e-3)
    assert per["avg_all"] == pytest.approx([51.667, 55.667, 51.667], abs=1e-3)
    assert per["bwt"] == [-15, -5, None]
    assert per["fwt"] == [None, 2, -3]


def test_continual_diagonal_only():
    R = [[None] * 3, [60, None, None], [None, 70, None], [None, None, 80]]
    m = continual_metrics(R)
    assert all(m[k] is None for k in ("last", "avg_seen", "avg_all", "bwt", "fwt"))
    assert m["per_task"]["last"] == [None, None, 80]
    assert m["per_task"]["avg_seen"] == [None, None, 80]
    assert m["per_task"]["bwt"] == [None, None, None]
    assert m["per_task"]["fwt"] == [None, None, None]


def test_continual_single_task():
    m = continual_metrics([[20], [60]])
    assert (m["last"], m["avg_seen"], m["avg_all"]) == (60, 60, 60)
    assert m["bwt"] is None and m["fwt"] is None


def test_continual_rejects_bad_shape():
    with pytest.raises(MetricError):
        continual_metrics([[1, 2], [3]])


# ---------------------------------------------------------------- family registry


def test_score_family_each_family():
    score, per, parsed = score_family("vqa10", ["Two", "three"], [{"answers": _answers(1)}] * 2)
    assert (score, per, parsed) == (pytest.approx(65.0), pytest.approx([30.0, 100.0]), ["2", "3"])

    score, per, parsed = score_family("short", [" Paris", "x"], [{"answer": "paris"}] * 2)
    assert (score, per, parsed) == (50.0, [100.0, 0.0], ["paris", "x"])

    samples = [{"choices": CHOICES, "answer": 1}, {"choices": CHOICES, "answer": 0}]
    score, per, parsed = score_family("choice", ["It is a dog", "no idea"], samples)
    assert (score, per, parsed) == (50.0, [100.0, 0.0], ["B", None])

    sample = {"bbox": [0, 0, 100, 100], "width": 200, "height": 100}
    score, per, parsed = score_family("grounding", ["[[0,0,500,1000]]", "?"], [sample] * 2)
    assert (score, per, parsed) == (50.0, [100.0, 0.0], ["[0.0, 0.0, 100.0, 100.0]", None])

    samples = [{"references": ["a dog runs"]}, {"references": ["a cat sleeps"]}]
    score, per, parsed = score_family("caption", ["a dog runs", "a cat sleeps"], samples)
    # identical, but three words have no 4-grams: cosine 1 for n = 1..3 only -> 3/4 × 1000
    assert per == pytest.approx([750.0, 750.0]) and parsed == ["a dog runs", "a cat sleeps"]


def test_score_family_errors():
    with pytest.raises(MetricError, match="unknown task family"):
        score_family("bleu", ["a"], [{}])
    with pytest.raises(MetricError, match="needs the field 'answer'"):
        score_family("short", ["a"], [{}])
    with pytest.raises(MetricError):
        score_family("short", ["a", "b"], [{"answer": "a"}])
    with pytest.raises(MetricError):
        score_family("short", [], [])
