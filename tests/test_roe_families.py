"""RoE on every family dmole supports, on tiny checkpoints written by transformers' save_pretrained in the current
and the older hub layout: `route-train` with a tuned backbone (which trains the dense twin first) and `eval --roe`,
through the command line. The backbone's parameter groups come from the family's declaration, so the tensors saved
are exactly the LM's and the projector's, whatever a family calls them."""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open
from typer.testing import CliRunner

from dmole.stages.models.catalog import MODEL_TYPES
from dmole.stages.models.registry import load_family
from dmole.stages.models.tiny import LAYOUTS, TinySize, build_tiny

SIZE = TinySize(lm_layers=3, vision_layers=1, lm_hidden=64, lm_intermediate=128)
TASKS = ("color-vqa", "shape-choice")


def _names(parameters) -> set[str]:
    return {name for name, _ in parameters}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("family", list(MODEL_TYPES))
def test_route_train_and_eval_roe_run_on_the_family(family, layout, pipeline_data, tmp_path):
    from dmole.cli.app import app

    model = build_tiny(family, tmp_path / "model", size=SIZE, layout=layout)
    workspace = tmp_path / "ws"
    runner = CliRunner()

    def dmole(*args: str) -> None:
        result = runner.invoke(app, [*args, "--workspace", str(workspace)])
        assert result.exit_code == 0, result.output

    dmole("init", "--model", str(model), "--data", str(pipeline_data), "--tasks", ",".join(TASKS))
    dmole(
        "route-train",
        "--stage2-mode",
        "full",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--max-eval-samples",
        "2",
        "--eval-batch-size",
        "2",
        "--roe-lr",
        "1e-2",
        "--backbone-lr",
        "1e-3",
        "-q",
    )
    dmole("eval", "--roe", "--batch-size", "2", "-q")  # every test sample (two a task), as route-train scored

    # what the family declares as its LM and projector, on an independent load of the folder
    adapter = load_family(model, device="cpu")
    lm = {
        n
        for n, _ in adapter.model.named_parameters()
        if n.startswith(f"{adapter.lm_path}.") or n.startswith("lm_head.")
    }
    projector = _names(adapter.named_projector())
    assert lm and projector and not lm & projector
    vision = {n for n, _ in adapter.vision_layers().named_parameters()}
    assert not any(n.endswith(v) for n in projector for v in vision)  # the tower stays frozen

    trained = next((workspace / "route-train" / "all").glob("v*"))
    with safe_open(str(trained / "backbone.safetensors"), framework="pt") as handle:
        saved = set(handle.keys())
    assert saved == lm | projector
    report = json.loads((trained / "roe_report.json").read_text())
    assert report["dense_reference"] == "dense twin" and set(report["per_task"]) == set(TASKS)
    evaluated = json.loads(next((workspace / "roe-eval" / "all").glob("v*/roe_report.json")).read_text())
    assert evaluated["roe_score"] == pytest.approx(report["roe_score"])
    assert evaluated["skip_rate_per_layer"] == report["skip_rate_per_layer"]
