"""The report's figures, one module per figure. Each reads its data from the workspace (``gather``), renders
it as a markdown table (``table``) and as a PNG (``plot``); matplotlib is imported only inside ``plot``.

- ``matrix``: the continual matrix R of every method with its metrics.
- ``allocation``: which layers hold each task's experts, per tower (the architecture's evolution).
- ``activation``: the share of each task's test samples routed to each task's experts, and the rejection
  rate on tasks not yet seen.
- ``sensitivity``: the zero-cost scores per layer, tower and task.
- ``rescores``: each rescored evaluation's task scores under its own grader and under each rule re-scored.
- ``roe_skips``: RoE's skip rate per layer and the number of layers each example skipped.
- ``roe_sweep``: RoE's skip-ratio sweep against static dropping and random routing: relative scores per task, skip
  and batch-1 speed-up.
"""
