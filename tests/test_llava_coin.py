"""LLaVA's and CoIN's JSON files read as they are distributed: a training list of {id, image, conversations}
(LLaVA's llava_v1_5_mix665k.json, CoIN's train.json) and an evaluation list of {question_id, image, text, answer}
(CoIN's test.json, the file its eval scripts compare answers with)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from dmole.stages.config import TaskSpec
from dmole.stages.data.errors import DataError
from dmole.stages.data.prompts import render_prompt
from dmole.stages.data.tasks import load_eval_samples, load_train_samples

# llava_v1_5_mix665k.json: a JSON list, indented, each entry {id, image, conversations}; image paths relative to
# the image folder; several turns; the ShareGPT part has text-only entries ({id, model, conversations}).
LLAVA_TRAIN = [
    {
        "id": "000000033471",
        "image": "coco/train2017/000000033471.jpg",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat are the colors of the bus in the image?"},
            {"from": "gpt", "value": "The bus in the image is white and red."},
            {"from": "human", "value": "What feature can be seen on the back of the bus?"},
            {"from": "gpt", "value": "The back of the bus features an advertisement."},
        ],
    },
    {
        "id": "2354786",
        "image": "gqa/images/2354786.jpg",
        "conversations": [
            {"from": "human", "value": "Is the sky dark?\nAnswer the question using a single word or phrase."},
            {"from": "gpt", "value": "Yes"},
        ],
    },
]
SHAREGPT_ENTRY = {
    "id": "i6IyJda_0",
    "model": "",
    "conversations": [{"from": "human", "value": "Hello"}, {"from": "gpt", "value": "Hi."}],
}

# CoIN's Instructions/<task>/test.json: a JSON list; `text` is the whole prompt (question, then the instruction
# on its last line, which CoIN's create_prompt.py strips), `answer` the ground truth its eval scripts compare with.
COIN_TEST = [
    {
        "question_id": "111",
        "image": "ocrvqa/images/111.jpg",
        "text": "Who wrote this book?\nAnswer the question using a single word or phrase.",
        "answer": "Donna Eden",
    },
    {
        "question_id": "112",
        "image": "ocrvqa/images/112.jpg",
        "text": "Is this a comedy book?\nAnswer the question using a single word or phrase.",
        "answer": "No",
    },
]


@pytest.fixture
def root(tmp_path):
    for path in (
        "coco/train2017/000000033471.jpg",
        "gqa/images/2354786.jpg",
        "ocrvqa/images/111.jpg",
        "ocrvqa/images/112.jpg",
    ):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 6)).save(tmp_path / path)
    return tmp_path


def write(path, document):
    path.write_text(json.dumps(document, indent=2), encoding="utf-8")  # indented, as both projects publish them
    return path.name


def task(root, train=LLAVA_TRAIN, test=COIN_TEST, **fields) -> TaskSpec:
    return TaskSpec(
        name="coin-ocrvqa",
        family="short",
        train=write(root / "train.json", train),
        eval=write(root / "test.json", test),
        **fields,
    )


def test_a_llava_training_list_reads_with_every_turn(root):
    samples = load_train_samples(root, task(root))
    assert [s.id for s in samples] == ["000000033471", "2354786"]
    assert samples[0].image == (root / "coco/train2017/000000033471.jpg").resolve()
    assert samples[0].turns[1] == (
        "What feature can be seen on the back of the bus?",
        "The back of the bus features an advertisement.",
    )
    assert samples[1].turns[0][0].startswith("<image>\nIs the sky dark?")  # the placeholder added, as for JSONL


def test_a_coin_question_list_reads_with_its_text_as_the_prompt(root):
    spec = task(root, prompt="{text}")
    samples = load_eval_samples(root, spec)
    assert [s.id for s in samples] == ["111", "112"]
    assert samples[0].references == {"answer": ["Donna Eden"]}
    assert render_prompt(spec, samples[1]) == COIN_TEST[1]["text"]


def test_the_default_prompt_on_coin_text_says_which_prompt_to_set(root):
    spec = task(root)
    sample = load_eval_samples(root, spec)[0]
    with pytest.raises(DataError, match=r"needs field 'question'.*set the task's prompt to \"\{text\}\""):
        render_prompt(spec, sample)


@pytest.mark.parametrize(
    "train, test, expected",
    [
        (
            LLAVA_TRAIN + [SHAREGPT_ENTRY],
            COIN_TEST,
            "train.json: field '[2].image': missing: dmole trains on image samples",
        ),
        (LLAVA_TRAIN + [LLAVA_TRAIN[1]], COIN_TEST, "train.json: field '[2].id': id '2354786' repeats entry [1]"),
        (
            LLAVA_TRAIN,
            [COIN_TEST[0], {**COIN_TEST[1], "answer": 3}],
            "test.json: field '[1].answer': expected str or list, got int",
        ),
        (
            LLAVA_TRAIN,
            [COIN_TEST[0], {**COIN_TEST[1], "image": "ocrvqa/images/9.jpg"}],
            "test.json: field '[1].image': image file 'ocrvqa/images/9.jpg' does not exist",
        ),
        (LLAVA_TRAIN, [COIN_TEST[0], "not an object"], "test.json: field '[1]': expected a JSON object, got str"),
    ],
)
def test_errors_in_a_list_name_the_file_the_entry_and_the_field(root, train, test, expected):
    spec = task(root, train, test)
    with pytest.raises(DataError) as caught:
        load_train_samples(root, spec)
        load_eval_samples(root, spec)
    assert expected in str(caught.value)
