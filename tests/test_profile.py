"""The reference profile is one declaration (stages/profile.py): its settings are valid stage options, and
docs/dmole.md's table of differences is the one generated from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from dmole.stages.profile import DIFFERENCES, NOT_SWITCHABLE, SAME, Difference, difference_table, reference_settings
from dmole.stages.registry import STAGES
from dmole.stages.resolve import REFERENCE_PROFILE

DOCS = Path(__file__).resolve().parents[1] / "docs" / "dmole.md"


def test_the_docs_table_is_the_generated_one():
    lines = DOCS.read_text(encoding="utf-8").splitlines()
    start = lines.index(difference_table().splitlines()[0])
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
    assert "\n".join(lines[start:end]) == difference_table()
    assert end - start == 2 + len(DIFFERENCES)


def test_the_profile_sets_valid_options_and_only_the_declared_ones():
    assert reference_settings() == REFERENCE_PROFILE
    for stage, values in REFERENCE_PROFILE.items():
        options = STAGES[stage].options.model_validate(values)
        assert {key: getattr(options, key) for key in values} == values
    declared = {(stage, key) for d in DIFFERENCES for stage, values in d.settings.items() for key in values}
    assert declared == {(stage, key) for stage, values in REFERENCE_PROFILE.items() for key in values}


def test_every_difference_says_what_the_profile_does_about_it():
    topics = [d.topic for d in DIFFERENCES]
    assert len(set(topics)) == len(topics)
    for difference in DIFFERENCES:
        assert difference.reference_cell
    for topic in (
        "LoRA alpha",
        "zero-cost proxy images",
        "evaluation vote group",
        "training vote group",
        "CIDEr tokenizer",
        "threshold",
    ):
        assert topic in topics
    assert any(d.reference == SAME for d in DIFFERENCES) and any(d.reference == NOT_SWITCHABLE for d in DIFFERENCES)
    with pytest.raises(ValueError, match="says neither what the profile sets nor why"):
        Difference("x", "official", "dmole")


def test_eval_falls_back_to_ptb_python_without_java_in_one_line_only_when_it_scores_captions(monkeypatch):
    from types import SimpleNamespace

    from dmole.stages.config import WorkspaceConfig
    from dmole.stages.evaluate import _with_caption_tokenizer
    from dmole.stages.options import EvalOptions

    tasks = [
        {"name": "cap", "family": "caption", "train": "t", "eval": "e"},
        {"name": "vqa", "family": "short", "train": "t", "eval": "e"},
    ]
    project = SimpleNamespace(config=WorkspaceConfig(model="m", data="d", tasks=tasks, profile="reference"))
    options = EvalOptions(caption_tokenizer=REFERENCE_PROFILE["eval"]["caption_tokenizer"])
    monkeypatch.setattr("dmole.stages.metrics.caption.shutil.which", lambda name: None)
    resolved, notices = _with_caption_tokenizer(project, options, ["cap", "vqa"])
    assert resolved.caption_tokenizer == "ptb-python" and len(notices) == 1 and "\n" not in notices[0]
    assert _with_caption_tokenizer(project, options, ["vqa"])[1] == []
    monkeypatch.setattr("dmole.stages.metrics.caption.shutil.which", lambda name: "/usr/bin/java")
    assert _with_caption_tokenizer(project, options, ["cap"]) == (
        options.model_copy(update={"caption_tokenizer": "ptb"}),
        [],
    )
