"""Re-scoring and grader selection: the four text rules on hand-graded replies, `dmole rescore` on an evaluation's
stored replies against grading them directly, `eval --grader mcitlib` against MCITlib's rules applied by hand, the
report's side-by-side section, and one-line errors for a user's mistakes.

The evaluations here do not generate: ``predict`` is replaced by crafted replies (right, differently cased, with an
article and a period, wrong), so that every rule has something to tell apart, and the tests run in seconds."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from conftest import MICRO_STAGES
from dmole.artifacts.io import read_parquet
from dmole.cli.app import app
from dmole.stages.errors import UserError
from dmole.stages.evaluate import evaluate
from dmole.stages.evaluation import predict as predict_module
from dmole.stages.init import create_workspace
from dmole.stages.metrics import MetricError, mcitlib_rules, text_rules
from dmole.stages.metrics.choice import option_letters
from dmole.stages.metrics.field_graders import caption_backends, score_rule
from dmole.stages.options import EvalOptions, hashed
from dmole.stages.project import Project
from dmole.stages.registry import EVAL, RESCORE
from dmole.stages.report import report
from dmole.stages.rescore import rescore

runner = CliRunner()
TEXT_RULES = ("strict", "normalised", "numeric", "token-f1")


# --- the rules on hand-graded replies ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "reply", "gold", "expected"),
    [
        ("strict", "Paris", "Paris", 1.0),
        ("strict", "paris", "Paris", 0.0),
        ("strict", " Paris ", "Paris", 1.0),
        ("strict", "Paris.", "Paris", 0.0),
        ("normalised", "The Paris.", "paris", 1.0),
        ("normalised", "two", "2", 1.0),
        ("normalised", "Paris!", "London", 0.0),
        ("numeric", "There are 4 cubes.", "3", 1.0),
        ("numeric", "5", "3", 0.0),
        ("numeric", "two", "3", 1.0),
        ("numeric", "3", "three", 1.0),
        ("numeric", "-2", "-1", 1.0),
        ("numeric", "1,000", "1001", 1.0),
        ("numeric", "no number", "7", 0.0),
        ("numeric", "A dog", "dog", 1.0),  # a gold answer that is no number is graded as normalised
        ("numeric", "cat", "dog", 0.0),
        ("token-f1", "a red ball", "the red cube", 0.5),  # red shared: precision 1/2, recall 1/2
        ("token-f1", "red ball on table", "red ball", 2 / 3),  # precision 2/4, recall 1
        ("token-f1", "", "red", 0.0),
        ("token-f1", "the", "a", 1.0),  # both empty once articles go
    ],
)
def test_text_rules_on_hand_graded_replies(rule, reply, gold, expected):
    assert text_rules.RULES[rule](reply, gold) == pytest.approx(expected)


def test_a_sample_scores_its_best_gold_answer_and_boxes_are_no_text():
    assert score_rule("strict", ["Paris", "Rome"], [{"answer": ["x", "Paris"]}] * 2)[1] == [100.0, 0.0]
    choice = {"choices": ["cat", "dog"], "answer": 1}  # right as its letter or its text
    assert score_rule("strict", ["B", "dog", "A"], [choice] * 3)[1] == [100.0, 100.0, 0.0]
    first = {"choices": ["cat", "dog"], "answer": 0}  # "A" is an article to the VQA normalisation, not here
    for rule in ("normalised", "token-f1", "numeric"):
        assert score_rule(rule, ["The", "A.", "(a)", "B", "cat"], [first] * 5)[1] == [0.0, 100.0, 100.0, 0.0, 100.0]
    vqa = {"answers": ["red"] * 3 + ["blue"] * 7}
    assert score_rule("token-f1", ["red", "green"], [vqa] * 2)[1] == [100.0, 0.0]
    # a field grader's rule on dmole's list of short answers: its best over them, as for the text rules
    assert score_rule("mcitlib-exact", ["PARIS"], [{"answer": ["rome", "paris"]}])[1] == [100.0]
    with pytest.raises(MetricError, match="text answers"):
        score_rule("strict", ["[0, 0, 1, 1]"], [{"bbox": [0, 0, 1, 1], "width": 1, "height": 1}])


def test_the_default_grader_leaves_the_eval_config_hash_as_it_was():
    assert "grader" not in hashed(EvalOptions())
    assert hashed(EvalOptions()) == EvalOptions().model_dump(exclude={"grader"})
    assert hashed(EvalOptions(grader="mcitlib"))["grader"] == "mcitlib"


# --- stored replies --------------------------------------------------------------------------------------------

VARIANTS = 4  # right, upper-cased, with an article and a period, wrong


def _gold(references: dict) -> str:
    """The crafted replies' gold text: a caption's first reference, the VQA majority answer, the short answer, the
    choice's letter."""
    if "references" in references:
        return references["references"][0]
    if "answers" in references:
        return max(set(references["answers"]), key=references["answers"].count)
    if "choices" in references:
        return option_letters(len(references["choices"]))[references["answer"]]
    if "answer" in references:
        return references["answer"][0]
    return "[0.1, 0.2, 0.5, 0.6]"  # grounding


def _reply(references: dict, index: int) -> str:
    gold = _gold(references)
    return (gold, gold.upper(), f"The {gold}.", "zzz")[index % VARIANTS]


@pytest.fixture
def crafted(monkeypatch):
    """eval's generation replaced by the crafted replies."""

    def predict(_adapter, _task, samples, **_):
        return [_reply(s.references, i) for i, s in enumerate(samples)]

    monkeypatch.setattr(predict_module, "predict", predict)


# What each text rule gives the four variants, worked out by hand: only the reply equal to the gold answer is right
# under strict; normalisation drops the case, the article and
# the period. None of the micro benchmark's answers is a number, so numeric grades as normalised.
EXPECTED = {"strict": [1, 0, 0, 0], "normalised": [1, 1, 1, 0], "numeric": [1, 1, 1, 0], "token-f1": [1, 1, 1, 0]}
# a choice's replies are its letter ("A", "A" again, "The A.", "zzz"): a letter reply is right under every rule, and
# "The A." under none (the VQA normalisation would empty both it and the gold "A", and call them equal)
CHOICE = [1, 1, 0, 0]


@pytest.mark.usefixtures("crafted")
def test_rescore_scores_the_stored_replies_as_grading_them_directly(make_project):
    project = make_project()
    evaluation = evaluate(project, "zero-shot").version
    evaluated = sorted(p.name for p in evaluation.path.rglob("*") if p.is_file())
    result = rescore(project, "zero-shot", {"rules": [*TEXT_RULES, "dmole"]})
    assert not result.up_to_date and result.version.number == 1 and result.version.stage == RESCORE.name
    # eval's version is left as it is: still the only one, with the same files
    assert [v.number for v in project.store.versions(EVAL.name, "zero-shot")] == [1]
    assert sorted(p.name for p in evaluation.path.rglob("*") if p.is_file()) == evaluated
    assert rescore(project, "zero-shot", {"rules": [*TEXT_RULES, "dmole"]}).up_to_date

    rows = {(r["task"], r["name"]): r for r in read_parquet(result.version.file(RESCORE.files.scores)).to_pylist()}
    own = {r["task"]: r for r in read_parquet(evaluation.file(EVAL.files.scores)).to_pylist()}
    for task in project.config.task_names:
        family = project.config.task(task).family
        stored = read_parquet(evaluation.file(EVAL.files.predictions.format(task=task))).to_pylist()
        # dmole's grader reproduces the evaluation's own scores, per sample too
        assert rows[task, "dmole"]["score"] == own[task]["score"]
        samples = read_parquet(result.version.file(RESCORE.files.samples.format(task=task, name="dmole"))).to_pylist()
        assert [s["score"] for s in samples] == [r["score"] for r in stored]
        if family == "grounding":  # boxes are no text answers
            assert all(rows[task, rule]["score"] is None and rows[task, rule]["note"] for rule in TEXT_RULES)
            continue
        for rule in TEXT_RULES:
            per_sample = read_parquet(
                result.version.file(RESCORE.files.samples.format(task=task, name=rule))
            ).to_pylist()
            table = CHOICE if family == "choice" else EXPECTED[rule]
            expected = [table[i % VARIANTS] for i in range(len(stored))]
            assert [s["score"] for s in per_sample] == pytest.approx([100.0 * e for e in expected]), (task, rule)
            assert rows[task, rule]["score"] == pytest.approx(100.0 * sum(expected) / len(expected))


# the micro tasks MCITlib's grader has rules for; its caption average runs java's PTB tokenizer and METEOR where java
# is present, several JVM starts per scoring: slow
MCITLIB_TASKS = [
    pytest.param(["opposite-short", "shape-choice"], id="short-choice"),
    pytest.param(["opposite-short", "shape-caption"], id="caption", marks=pytest.mark.slow),
]


@pytest.fixture
def project_of(micro_bench, tmp_path):
    """A workspace over the micro benchmark's ``tasks``."""

    def make(tasks: list[str]) -> Project:
        root = tmp_path / "-".join(tasks)
        create_workspace(
            root, model=micro_bench / "base-model", data=micro_bench / "data", tasks=tasks, stages=MICRO_STAGES
        )
        return Project.open(root)

    return make


@pytest.mark.usefixtures("crafted")
@pytest.mark.parametrize("tasks", MCITLIB_TASKS)
def test_eval_under_mcitlibs_grader_equals_its_rules_applied_by_hand(project_of, tasks):
    project = project_of(tasks)
    evaluation = evaluate(project, "zero-shot", {"grader": "mcitlib"}).version
    assert evaluation.manifest["config"]["options"]["grader"] == "mcitlib"
    assert evaluation.manifest["summary"]["grader"] == "mcitlib"
    rows = {r["task"]: r for r in read_parquet(evaluation.file(EVAL.files.scores)).to_pylist()}
    tokenizer, meteor, _ = caption_backends()
    for task in tasks:
        stored = read_parquet(evaluation.file(EVAL.files.predictions.format(task=task))).to_pylist()
        replies, references = [r["prediction"] for r in stored], [json.loads(r["references"]) for r in stored]
        if task == "shape-caption":
            expected = mcitlib_rules.caption(
                replies, [r["references"] for r in references], tokenizer=tokenizer, meteor=meteor
            )[0]
            assert rows[task]["metric"] == "mcitlib-caption" and rows[task]["tokenizer"] == tokenizer
        else:  # the whole reply, case aside, against the answer (a choice's as its letter)
            golds = [_gold(r) for r in references]
            expected = 100.0 * sum(mcitlib_rules.exact(p, g) for p, g in zip(replies, golds)) / len(golds)
            assert rows[task]["metric"] == "mcitlib-exact"
        assert rows[task]["score"] == pytest.approx(expected, abs=1e-9), task

    # the same replies scored under dmole's grader: another configuration, and rescore --rule mcitlib agrees
    dmole = evaluate(project, "zero-shot", force=True).version
    assert dmole.manifest["config_hash"] != evaluation.manifest["config_hash"]
    assert "grader" not in dmole.manifest["config"]["options"]
    rescored = rescore(project, "zero-shot", {"rules": ["mcitlib"]}).version
    again = {r["task"]: r["score"] for r in read_parquet(rescored.file(RESCORE.files.scores)).to_pylist()}
    assert again == pytest.approx({task: rows[task]["score"] for task in tasks}, abs=1e-9)


def one_line_error(project, *args: str) -> str:
    files = sorted(p for p in project.root.rglob("*") if p.is_file())
    result = runner.invoke(app, [*args, "--workspace", str(project.root)])
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert sorted(p for p in project.root.rglob("*") if p.is_file()) == files, "nothing is written"
    return lines[0]


@pytest.mark.usefixtures("crafted")
def test_a_users_mistake_is_one_line_and_writes_nothing(make_project, project_of):
    project = make_project()
    assert "no 'eval' artifact for task 'zero-shot'" in one_line_error(project, "rescore", "--zero-shot")
    assert "dmole eval --after shape-caption" in one_line_error(project, "rescore", "--after", "shape-caption")
    assert "unknown task" in one_line_error(project, "rescore", "--after", "nope")
    assert "exactly one of" in one_line_error(project, "rescore")
    # CoIN's scripts grade no captions: said before anything is generated
    assert "no rule for a 'caption' task" in one_line_error(project, "eval", "--zero-shot", "--grader", "coin")
    evaluate(project, "zero-shot")
    assert "unknown grader or rule 'exact'" in one_line_error(project, "rescore", "--zero-shot", "--rule", "exact")
    # a rule that grades none of the tasks
    project = project_of(["locate-grounding"])
    evaluate(project, "zero-shot")
    with pytest.raises(UserError, match="none of strict"):
        rescore(project, "zero-shot", {"rules": ["strict"]})


@pytest.mark.usefixtures("crafted")
def test_cli_rescore_json_and_quiet(make_project):
    project = make_project()
    evaluate(project, "zero-shot")
    args = ["rescore", "--zero-shot", "--rule", "numeric", "--rule", "coin", "--workspace", str(project.root)]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    written = json.loads(result.output)
    assert (written["stage"], written["task"], written["version"], written["up_to_date"]) == (
        "rescore",
        "zero-shot",
        1,
        False,
    )
    # CoIN's grader has no rule for captions: that cell is empty, and said once
    assert any("coin does not score shape-caption" in w for w in written["warnings"])
    quiet = runner.invoke(app, [*args, "-q"])
    assert quiet.exit_code == 0 and "up to date (v1)" in quiet.output


@pytest.mark.usefixtures("crafted")
def test_the_report_sets_the_rules_side_by_side_only_once_rescored(make_project):
    project = make_project()
    evaluate(project, "zero-shot")
    before = report(project).version.file("report.md").read_text(encoding="utf-8")
    assert "Scores under other rules" not in before
    rescored = rescore(project, "zero-shot").version
    after = report(project).version
    markdown = after.file("report.md").read_text(encoding="utf-8")
    assert "rescores.png" in json.loads(after.file("figures.json").read_text())
    assert (after.path / "rescores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    section = markdown.split("## Scores under other rules", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| task")]
    table = {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines)}
    scores = read_parquet(rescored.file(RESCORE.files.scores)).to_pylist()
    own = {
        r["task"]: r["score"]
        for r in read_parquet(project.store.latest(EVAL.name, "zero-shot").file(EVAL.files.scores)).to_pylist()
    }
    assert set(table) == set(project.config.task_names)
    for task, cells in table.items():
        assert cells[0] == f"{own[task]:.2f}"
        for cell, rule in zip(cells[1:], TEXT_RULES):
            (row,) = [r for r in scores if r["task"] == task and r["name"] == rule]
            assert cell == ("n/a" if row["score"] is None else f"{row['score']:.2f}")
    # the section is the only difference
    assert markdown.replace("## Scores under other rules" + section + "\n", "") == before
