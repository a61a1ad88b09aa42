"""D-MoLE's training step against a plain PEFT LoRA step at InternVL2-2B's language-model width, on the CPU.

`dmole_bench.py` measures the step on the demo's width-128 model, where a LoRA path is 2r/D = 12.5 % of a
projection's multiply-adds and a dropout mask (B·L·D random numbers) weighs as much against a projection
(B·L·D·D_out multiply-adds) as it ever will. Here the language model has InternVL2-2B's width and head layout
(`shapes.py`: hidden 2048, MLP 8192, 16 heads, 8 KV heads), ``--layers`` deep, beside a one-layer tiny vision tower
and a small vocabulary, so a step costs what a language-model layer of the real model costs.

The batch is ``--batch`` copies of one chat sample of about ``--tokens`` tokens (a tiny image, a question and a
long answer): by default one sample of 1,024 tokens, about what InternVL2-2B gives a sample of three 448 px tiles
and a thumbnail (4 x 256 image tokens; D-MoLE trains with up to six tiles and 2,048 tokens). Every cost compared
scales with B·L alike (the masks, the projections, the LoRA paths), so a larger batch moves the ratio only through
the fixed per-step work (hooks, the optimizer), which makes batch 1 the less favourable case for D-MoLE.

As in `gpu_bench.py` (`step_ratio.attention_experts`): the new expert on every language attention projection, the
frozen past expert on every other layer's, D-MoLE's LoRA (rank 8, alpha 16, dropout 0.05); plain PEFT LoRA on the new
expert's modules has its trainable parameters. One run interleaves, in every round, with dropout 0.05: D-MoLE with
the partner and a mask per expert (the reference's), D-MoLE with the partner and one mask per module
(``train-task --dropout-mask shared``), D-MoLE with its own expert only, plain LoRA; and without dropout: D-MoLE with
the partner, with its own expert only, plain LoRA. Medians of ``--repeats`` rounds after ``--warmup``.

    python bench/step_ratio_width.py --out bench/results/step_ratio_width.json   # the measurement
    python bench/step_ratio_width.py --quick                                     # smoke run: 1 layer, 128 tokens
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image

from dmole.stages.device import cpu_name
from dmole.stages.methods.dmole import DMoLEHyper
from dmole.stages.models.base import ChatExample
from dmole.stages.models.registry import load_family
from dmole.stages.models.tiny import build_tiny
from dmole.stages.options import AllocateOptions
from shapes import INTERNVL2_2B, language_model_only
from step_ratio import attention_experts, step_ratios

QUICK = {"layers": 1, "tokens": 128, "repeats": 1, "warmup": 0}
SENTENCE = "A red square sits to the left of a small blue circle on a grey background. "


def long_example(adapter, tokens: int) -> ChatExample:
    """One chat sample of about ``tokens`` tokens (never fewer than one sentence's answer gives)."""
    image = Image.new("RGB", (32, 32), (200, 30, 30))

    def example(sentences: int) -> ChatExample:
        return ChatExample(image, [("<image>\nDescribe the image in detail.", SENTENCE * sentences)])

    def length(sentences: int) -> int:
        return adapter.train_inputs([example(sentences)])["input_ids"].shape[1]

    one, two = length(1), length(2)
    return example(1 + max(0, round((tokens - one) / (two - one))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=2, help="language-model layers")
    parser.add_argument("--tokens", type=int, default=1024, help="tokens per sample, about")
    parser.add_argument("--batch", type=int, default=1, help="samples per step")
    parser.add_argument("--repeats", type=int, default=3, help="timed interleaved rounds")
    parser.add_argument("--warmup", type=int, default=1, help="untimed first rounds")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK}")
    parser.add_argument("--out", type=Path, default=None, help="write the results here as JSON")
    args = parser.parse_args()
    if args.quick:
        vars(args).update(QUICK)
    started = time.perf_counter()
    size = language_model_only(INTERNVL2_2B, args.layers)
    lora = DMoLEHyper().lora(AllocateOptions().rank)  # D-MoLE's expert LoRA at the default rank
    with tempfile.TemporaryDirectory() as tmp:
        model_path = build_tiny("internvl", Path(tmp) / "model", size=size)
        adapter = load_family(model_path)
        partner, own = attention_experts(adapter, tower="language")
        example = long_example(adapter, args.tokens)
        tokens = adapter.train_inputs([example])["input_ids"].shape[1]
        del adapter
        results = step_ratios(
            lambda: load_family(model_path),
            partner,
            own,
            [example] * args.batch,
            {"dropout": lora, "no_dropout": replace(lora, dropout=0.0)},
            args.repeats,
            shared_mask=True,
            warmup=args.warmup,
        )
    out = {
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu": cpu_name(),
        },
        "size": dataclasses.asdict(size),
        "tokens_per_sample": tokens,
        "batch": args.batch,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "lora": dataclasses.asdict(lora),
        "partner_modules": len(partner),
        "own_modules": len(own),
        **results,
        "wall_s": time.perf_counter() - started,
    }
    print(json.dumps(out, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
