"""What the benchmarks that retrain route-sweep's runs from one seed's warm-start twin share: their arguments
(workspace, twin folder, seed, --json), the twin folder's check, and the sweep's options without batch-1 timing."""

from __future__ import annotations

import argparse
from pathlib import Path

from dmole.stages.options import RouteSweepOptions
from dmole.stages.registry import ROE_SWEEP
from dmole.stages.resolve import stage_options
from dmole.stages.roe.recipe import WARM


def add_twin_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-w", "--workspace", type=Path, required=True)
    parser.add_argument("--twin", type=Path, required=True, help="a route-sweep seed's twin folder")
    parser.add_argument("--seed", type=int, required=True, help="the training seed (the twin's seed)")
    parser.add_argument("--json", type=Path, help="also write the results here")


def warm_tensors(parser: argparse.ArgumentParser, twin: Path) -> Path:
    """The twin's stage-2 tensors, where its runs start; a one-line error when ``twin`` is not a twin folder."""
    if not (twin / WARM).is_dir():
        parser.error(f"{twin} is not a warm-start twin folder (no {WARM}/ in it)")
    return twin / WARM


def untimed_sweep(project) -> RouteSweepOptions:
    """The workspace's route-sweep options with no batch-1 timing (these benchmarks compare scores only)."""
    return stage_options(project.config, ROE_SWEEP.name, None).model_copy(update={"speed_prompts": 0})
