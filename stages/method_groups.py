"""The demo's method lists, data only, so that the command line can name them in its help without importing torch."""

from __future__ import annotations

# D-MoLE against the obvious alternative, the same LoRA trained task after task without allocation or routing; the
# other baselines (finetune, the upper bound, among them) are `--methods table2`, which keeps the demo in minutes
DEMO_METHODS = ("dmole", "seq-lora")
TABLE2 = ("zero-shot", "finetune", "joint", "seq-lora", "lwf-lora", "ewc-lora", "o-lora", "moelora", "dmole")
# the methods of 2026's tables (issue 29), and D-MoLE with replay
RECENT = ("replay", "mr-lora", "keeplora", "reglora", "hide", "dmole-replay")
GROUPS = {"table2": TABLE2, "recent": RECENT}
