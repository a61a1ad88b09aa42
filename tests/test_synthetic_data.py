"""The synthetic benchmark's generator: its training items written again as an evaluation split."""

from __future__ import annotations

import pytest

from dmole.stages.config import TaskSpec
from dmole.stages.data.eval_files import read_eval_file
from dmole.stages.data.synthetic import TASK_FAMILIES, SynthSizes, training_items_as_eval, write_benchmark
from dmole.stages.data.training_file import read_training_file
from dmole.stages.evaluation.grading import score_predictions

SIZES = SynthSizes(image_size=16, train_per_task=6, test_per_task=2)


@pytest.mark.parametrize("task", list(TASK_FAMILIES))
def test_training_items_as_an_eval_split_hold_the_training_images_and_grade_their_answers_right(tmp_path, task):
    original, again = tmp_path / "original", tmp_path / "again"
    entry = next(t for t in write_benchmark(original, seed=5, sizes=SIZES) if t["name"] == task)
    relative = training_items_as_eval(again, task, 4, seed=5, sizes=SIZES)
    train = read_training_file(original / entry["train"], data_root=original, image_root=original)
    items = read_eval_file(TASK_FAMILIES[task], again / relative, data_root=again, image_root=again)
    assert len(items) == 4
    assert [i.image.read_bytes() for i in items] == [s.image.read_bytes() for s in train[:4]]
    answers = [s.turns[0][1] for s in train[:4]]
    spec = TaskSpec(name=task, family=TASK_FAMILIES[task], train=entry["train"], eval=relative)
    score = score_predictions(spec, items, answers).score
    if TASK_FAMILIES[task] == "caption":  # CIDEr-D scores a reference against its fellows, not 100
        assert all(answer in item.references["references"] for answer, item in zip(answers, items))
    else:
        assert score == pytest.approx(100.0)
    assert score_predictions(spec, items, answers[1:] + answers[:1]).score < score


def test_training_items_as_eval_refuses_a_count_outside_the_training_items(tmp_path):
    with pytest.raises(ValueError, match="between 1 and the 6 training items"):
        training_items_as_eval(tmp_path, "color-vqa", 7, sizes=SIZES)
