"""The reference profile: every way dmole differs from the official implementation (gcd19/D-MoLE), declared once.

Each `Difference` names its topic, what the official code does, what dmole does by default, and either the stage
options `profile: reference` sets to get the official behaviour back or, for a difference that is no option, what
the reference column says (the same, not switchable, or what else decides it). The profile's stage defaults
(`reference_settings`) and docs/dmole.md's table (`difference_table`; a test keeps the page equal to it) are both
read from `DIFFERENCES`, so neither can leave a difference out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .registry import EVAL, FIT_ROUTER, TRAIN_TASK, ZC_SCORE

SAME = "(same)"
NOT_SWITCHABLE = "not switchable"


@dataclass(frozen=True)
class Difference:
    topic: str
    official: str
    dmole: str
    settings: dict[str, dict] = field(default_factory=dict)  # stage -> options set under `profile: reference`
    reference: str = ""  # the reference column's words, after (or instead of) the settings

    def __post_init__(self) -> None:
        if not self.settings and not self.reference:
            raise ValueError(f"difference {self.topic!r} says neither what the profile sets nor why it sets nothing")

    @property
    def reference_cell(self) -> str:
        settings = ", ".join(
            f"`{stage}.{key}: {value if isinstance(value, str) else json.dumps(value)}`"
            for stage, values in self.settings.items()
            for key, value in values.items()
        )
        return " ".join(part for part in (settings, self.reference) if part)


DIFFERENCES: tuple[Difference, ...] = (
    Difference(
        "inference routing",
        "one expert set per batch: majority vote, a second task needs ≥ 30% of the votes",
        "per-sample top-2 (results independent of the batch)",
        {EVAL.name: {"routing": "batch-vote"}},
    ),
    Difference(
        "order of the accepting routers",
        "lowest raw reconstruction error (argmin over the accepting routers)",
        "lowest error relative to the router's own threshold, e_k / τ_k",
        {EVAL.name: {"ranking": "error"}},
    ),
    Difference(
        "second expert",
        "the runner-up of the batch vote, with ≥ 30% of its votes",
        "per sample, the past task the first expert was trained beside for that input (train-task's own choice)",
        reference="the vote decides (`eval.routing: batch-vote`)",
    ),
    Difference(
        "evaluation vote group",
        "each process's generation batch: 10 for captions and grounding, 8 for VQA "
        "and multiple choice (the evaluation scripts' `--batch-size` defaults, which `dmole.sh`'s evaluation "
        "after every task uses; the standalone `run_eval.sh` passes 16 or 8)",
        "batches of 8 (per-sample routing does not depend on them)",
        reference="under batch-vote, each task's `eval_batch_size` (`--benchmark dmole`: 10 / 8)",
    ),
    Difference(
        "evaluation batch composition",
        "8 processes each batch a contiguous shard of the split",
        "batches cut from the whole split, then shared among processes",
        reference=NOT_SWITCHABLE,
    ),
    Difference(
        "training routing",
        "the same vote per micro-batch",
        "per-sample past partner",
        {TRAIN_TASK.name: {"train_routing": "batch-vote"}},
    ),
    Difference(
        "training vote group",
        "each GPU's micro-batch: 10 (8 for OCR-VQA)",
        "the whole micro-batch (80 on one process without `--grad-accum 8`)",
        reference="each task's `vote_size` (`--benchmark dmole`: 10 / 8), whatever `--grad-accum`",
    ),
    Difference(
        "LoRA dropout of routed experts",
        "one mask per expert: `DMoLELinear.forward` calls its dropout once per selected expert of a module",
        "the same; `train-task.dropout_mask: shared` draws one mask per module forward for all its experts",
        {TRAIN_TASK.name: {"dropout_mask": "per-expert"}},
    ),
    Difference(
        "batching",
        "`group_by_length True`",
        "off (seeded random batches)",
        {TRAIN_TASK.name: {"group_by_length": True}},
    ),
    Difference(
        "router fit set",
        "11,264 random training samples (11 × 128 × 8 GPUs, seed 42)",
        "every training sample",
        {FIT_ROUTER.name: {"max_fit_samples": 11264}},
    ),
    Difference(
        "candidates (converted InternVL2)",
        "fused `wqkv` / `attn.qkv` and the output projection: 96",
        "the split `q`, `k`, `v` and `o`: 192",
        {ZC_SCORE.name: {"fuse_qkv": True}},
        reference="(one `qkv` candidate per layer and tower; below)",
    ),
    Difference(
        "threshold",
        "read from a hand-written `threshold.txt` per task that no script writes; "
        "`train_autoencoder.py` writes a table of the training errors' quantiles (min, Q10 … Q99, max, "
        "mean, std)",
        "q95 of the training reconstruction errors (`fit-router.quantile`)",
        reference="no rule to reproduce (dmole's rule stays)",
    ),
    Difference(
        "CIDEr tokenizer",
        "PTB (pycocoevalcap's Stanford tokenizer, needs java)",
        "`simple` (Python)",
        {EVAL.name: {"caption_tokenizer": "ptb-else-python"}},
        reference="(ptb-python without java, said in one line; measured difference below)",
    ),
    Difference(
        "LoRA alpha",
        "2 × rank (`lora_alpha = 2 * use_llm_lora`)",
        "the same (2r unless `--hparam alpha=N`)",
        reference=SAME,
    ),
    Difference(
        "zero-cost proxy images",
        "one view per image (no `--dynamic_image_size`)",
        "the same (`zc-score.max_tiles` 1, whatever the workspace's)",
        reference=SAME,
    ),
    Difference(
        "zero-cost proxy batches",
        "rank 0's gradients only: round(0.01 × its batches) + 1 batches of 2",
        "max(4 b, round(p N)) samples, gradients summed over all processes",
        reference=NOT_SWITCHABLE,
    ),
    Difference("sequence length", "`max_seq_length 2048`", "the same (`train-task.max_length`)", reference=SAME),
    Difference(
        "global batch",
        "10 per GPU × 8 GPUs (80; 64 for OCR-VQA)",
        "what the registry or preset says (`--benchmark dmole`: 80 / 64)",
        reference=SAME,
    ),
    Difference(
        "text embedding pooling",
        "padding (id 0) included in the max",
        "padding excluded, batch-independent",
        reference=NOT_SWITCHABLE,
    ),
    Difference(
        "routing features",
        "recomputed with an extra forward pass per batch",
        "read from the `embed` cache (identical values)",
        reference=NOT_SWITCHABLE,
    ),
    Difference(
        "router precision at inference",
        "bf16 routers against fp32 thresholds",
        "fp32 throughout",
        reference=NOT_SWITCHABLE,
    ),
    Difference(
        "a missing threshold",
        "printed, then exit status 0",
        "a one-line error, non-zero exit",
        reference=NOT_SWITCHABLE,
    ),
)

TABLE_HEADER = (
    "| topic | official implementation (gcd19/D-MoLE) | dmole default | under `--profile reference` |\n"
    "|---|---|---|---|"
)


def reference_settings() -> dict[str, dict]:
    """Stage -> the options `profile: reference` sets (below the workspace's `stages` section and flags)."""
    merged: dict[str, dict] = {}
    for difference in DIFFERENCES:
        for stage, values in difference.settings.items():
            merged.setdefault(stage, {}).update(values)
    return merged


def difference_table() -> str:
    """docs/dmole.md's table of every difference, as markdown."""
    rows = [f"| {d.topic} | {d.official} | {d.dmole} | {d.reference_cell} |" for d in DIFFERENCES]
    return "\n".join([TABLE_HEADER, *rows])


if __name__ == "__main__":  # python -m dmole.stages.profile: the table to paste into docs/dmole.md
    print(difference_table())
