"""The GPU-path training options on the CPU: gradient checkpointing changes memory, not results; bf16
autocast trains to nearly the fp32 expert."""

from __future__ import annotations

import math

import torch
from safetensors.torch import load_file

from dmole.stages.train_task import TrainTaskOptions, train_task

TASK = "color-vqa"


def _expert(project, **options):
    result = train_task(project, TASK, TrainTaskOptions(method="finetune", hparams={"dropout": 0.0}, **options))
    weights = load_file(result.version.file("expert/adapter_model.safetensors"))
    return weights, result.version.manifest["summary"]["final_loss"]


def test_gradient_checkpointing_gives_the_same_expert(make_project):
    plain, _ = _expert(make_project("plain"))
    checkpointed, _ = _expert(make_project("checkpointed"), gradient_checkpointing=True)
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5)


def test_bf16_autocast_trains_close_to_fp32(make_project):
    fp32, fp32_loss = _expert(make_project("fp32"), precision="fp32")
    bf16, bf16_loss = _expert(make_project("bf16"), precision="bf16")
    assert math.isfinite(bf16_loss) and abs(bf16_loss - fp32_loss) < 0.1 * fp32_loss
    assert any(not torch.equal(bf16[k], fp32[k]) for k in fp32), "autocast was not applied"
    lora_b = [k for k in fp32 if "lora_B" in k]
    difference = sum(float((bf16[k] - fp32[k]).norm() ** 2) for k in lora_b) ** 0.5
    scale = sum(float(fp32[k].norm() ** 2) for k in lora_b) ** 0.5
    assert difference < 0.25 * scale, difference / scale
