"""`dmole synth` over a folder that already holds something: nothing is lost unless --force says so, and a run
that fails leaves the folder as it was."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from conftest import MICRO_SIZES
from dmole.stages import synth as synth_module
from dmole.stages.config import ConfigError
from dmole.stages.pretrain import PretrainSettings
from dmole.stages.synth import MARKER, STAGING, synthesize
from test_hostile_corpus import snapshot

MICRO_PRETRAINING = {"vision_epochs": 1, "epochs": 1, "batch_size": 16}


def micro(out: Path, seed: int = 0, force: bool = False):
    return synthesize(
        out, seed=seed, force=force, sizes=MICRO_SIZES, pretraining=PretrainSettings(seed=seed, **MICRO_PRETRAINING)
    )


@pytest.fixture
def made(tmp_path) -> Path:
    """A micro benchmark whose workspace holds a result of the user's."""
    out = tmp_path / "bench"
    micro(out)
    (out / "workspace" / "results.txt").write_text("a week of training")
    return out


def test_another_recipe_is_refused_and_replaced_only_under_force(made):
    before = snapshot(made)
    with pytest.raises(
        ConfigError, match=r"another recipe \(seed 0 -> 1, pretrain\); replacing it deletes its workspace"
    ):
        micro(made, seed=1)
    assert snapshot(made) == before

    micro(made, seed=1, force=True)
    assert json.loads((made / MARKER).read_text())["seed"] == 1
    assert not (made / "workspace" / "results.txt").exists() and not (made / STAGING).exists()
    assert (made / "workspace" / "workspace.json").is_file() and (made / "base-model" / "config.json").is_file()


def test_the_same_recipe_is_reused_and_keeps_the_workspace(made):
    before = snapshot(made)
    assert micro(made).reused
    assert snapshot(made) == before


@pytest.mark.parametrize("force", [False, True])
def test_a_folder_synth_did_not_write_is_refused_even_under_force(tmp_path, force):
    out = tmp_path / "mine"
    (out / "data").mkdir(parents=True)
    (out / "data" / "notes.txt").write_text("not a benchmark")
    with pytest.raises(ConfigError, match="holds data/, which `dmole synth` did not write"):
        micro(out, force=force)
    assert snapshot(out) == {"data/notes.txt": hashlib.sha256(b"not a benchmark").hexdigest()}


def test_a_failed_rebuild_leaves_the_benchmark_as_it_was(made, monkeypatch):
    before = snapshot(made)

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt  # as Ctrl-C in the middle of pre-training

    monkeypatch.setattr(synth_module, "pretrain", interrupted)
    with pytest.raises(KeyboardInterrupt):
        micro(made, seed=1, force=True)
    assert {k: v for k, v in snapshot(made).items() if not k.startswith(STAGING)} == before
    monkeypatch.undo()
    micro(made, seed=1, force=True)  # the next run clears what the failed one staged
    assert not (made / STAGING).exists() and json.loads((made / MARKER).read_text())["seed"] == 1
