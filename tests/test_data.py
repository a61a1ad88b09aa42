"""Data validation: each malformed input names its file, line and field."""

from __future__ import annotations

import json
import os

import pytest
from PIL import Image

from dmole.stages.data.errors import DataError
from dmole.stages.data.eval_files import read_eval_file
from dmole.stages.data.images import load_image
from dmole.stages.data.training_file import read_training_file


@pytest.fixture
def root(tmp_path):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (40, 30)).save(tmp_path / "img" / "a.png")
    return tmp_path


def write_jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


def chat(**overrides):
    record = {
        "image": "img/a.png",
        "conversations": [{"from": "human", "value": "<image>\nq?"}, {"from": "gpt", "value": "a"}],
    }
    return {**record, **overrides}


def train_error(root, records) -> str:
    path = write_jsonl(root / "train.jsonl", records)
    with pytest.raises(DataError) as caught:
        read_training_file(path, data_root=root, image_root=root)
    return str(caught.value)


def test_a_valid_training_file_reads_and_adds_a_missing_placeholder(root):
    no_placeholder = chat(conversations=[{"from": "human", "value": "q?"}, {"from": "gpt", "value": "a"}], id=7)
    samples = read_training_file(
        write_jsonl(root / "t.jsonl", [chat(), no_placeholder]), data_root=root, image_root=root
    )
    assert [s.id for s in samples] == ["1", "7"]
    assert samples[1].turns[0][0] == "<image>\nq?" and samples[1].question == "q?"


@pytest.mark.parametrize(
    "records, expected",
    [
        ([chat(), "{not json"], ":2: not valid JSON"),
        ([chat(conversations="hi")], ":1: field 'conversations': expected list, got str"),
        (
            [chat(conversations=[{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}])],
            "field 'conversations[0]': expected from='human'",
        ),
        ([chat(image=["img/a.png", "img/a.png"])], "field 'image': one image per sample"),
        ([chat(image="/etc/passwd")], "is absolute"),
        ([chat(image="img/missing.png")], "image file 'img/missing.png' does not exist"),
        ([chat(id=1), chat(id=1)], ":2: field 'id': id '1' repeats line 1"),
        ([chat(id=True)], "field 'id': expected str or int, got bool"),
    ],
)
def test_training_file_errors(root, records, expected):
    assert expected in train_error(root, records)


def test_non_utf8_and_truncated_lines(root):
    path = root / "bad.jsonl"
    path.write_bytes(json.dumps(chat()).encode() + b"\n\xff\xfe\n")
    with pytest.raises(DataError, match=":2: not valid UTF-8"):
        read_training_file(path, data_root=root, image_root=root)
    path.write_bytes(json.dumps(chat()).encode()[:-5])
    with pytest.raises(DataError, match=":1: not valid JSON"):
        read_training_file(path, data_root=root, image_root=root)


def test_symlink_out_of_the_root_is_refused(root, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside") / "x.png"
    Image.new("RGB", (4, 4)).save(outside)
    os.symlink(outside, root / "img" / "link.png")
    assert "escapes the data root" in train_error(root, [chat(image="img/link.png")])


def test_a_directory_symlinked_out_of_the_root_is_refused_after_legitimate_samples(root, tmp_path_factory):
    """Directories are resolved once per file: a later sample under a symlinked directory is still followed."""
    outside = tmp_path_factory.mktemp("outside")
    Image.new("RGB", (4, 4)).save(outside / "a.png")
    os.symlink(outside, root / "img" / "away")
    assert "escapes the data root" in train_error(root, [chat(image="img/a.png"), chat(image="img/away/a.png")])
    assert "does not exist" in train_error(root, [chat(image="img/a.png"), chat(image="img/..")])


def test_images_resolve_to_the_same_paths_as_a_full_resolution(root):
    (root / "img" / "sub").mkdir()
    Image.new("RGB", (4, 4)).save(root / "img" / "sub" / "b.png")
    os.symlink(root / "img" / "sub" / "b.png", root / "img" / "alias.png")
    paths = ["img/a.png", "img/sub/b.png", "img/sub/../a.png", "img/./sub/b.png", "img/alias.png"]
    samples = read_training_file(
        write_jsonl(root / "t.jsonl", [chat(image=p, id=i) for i, p in enumerate(paths)]),
        data_root=root,
        image_root=root,
    )
    assert [s.image for s in samples] == [(root / p).resolve() for p in paths]


def test_images_that_are_not_images(root):
    (root / "img" / "fake.png").write_bytes(b"hello")
    with pytest.raises(DataError, match="not a readable image"):
        load_image(root / "img" / "fake.png")


def eval_error(root, family, records) -> str:
    path = write_jsonl(root / "eval.jsonl", records)
    with pytest.raises(DataError) as caught:
        read_eval_file(family, path, data_root=root, image_root=root)
    return str(caught.value)


@pytest.mark.parametrize(
    "family, record, expected",
    [
        ("vqa10", {"image": "img/a.png", "question": "q", "answers": ["a"] * 9}, "expected 10 answer strings"),
        ("short", {"image": "img/a.png", "question": "q", "answer": 3}, "field 'answer': expected str or list"),
        (
            "choice",
            {"image": "img/a.png", "question": "q", "choices": ["a", "b"], "answer": 2},
            "field 'answer': index 2 is outside the 2 choices",
        ),
        ("choice", {"image": "img/a.png", "question": "q", "choices": ["a"], "answer": 0}, "expected 2 to 5 option"),
        (
            "grounding",
            {"image": "img/a.png", "sent": "s", "bbox": [0, 0, 50, 10], "width": 40, "height": 30},
            "is not a well-formed box inside the 40x30 image",
        ),
        (
            "grounding",
            {"image": "img/a.png", "sent": "s", "bbox": [0, 0, 5], "width": 40, "height": 30},
            "expected four numbers",
        ),
    ],
)
def test_eval_file_errors(root, family, record, expected):
    message = eval_error(root, family, [record])
    assert ":1:" in message and expected in message


def test_caption_file_needs_references(root):
    path = root / "captions.json"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "img/a.png"}], "annotations": []}))
    with pytest.raises(DataError, match="image id 1 has no caption annotation"):
        read_eval_file("caption", path, data_root=root, image_root=root)
    path.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "img/a.png"}],
                "annotations": [{"image_id": 1, "caption": "x"}, {"image_id": 1, "caption": "y"}],
            }
        )
    )
    samples = read_eval_file("caption", path, data_root=root, image_root=root)
    assert samples[0].references == {"references": ["x", "y"]}
