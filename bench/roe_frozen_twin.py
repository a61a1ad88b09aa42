"""RoE, static dropping and random routing with the backbone frozen at a dense twin (issue 25's diagnostic).

With the default warm start, stage 2 tunes the backbone under each variant's skips: under static dropping to one
shallower network, under RoE to every skip set its routers draw. Freezing the backbone at the twin leaves only the
routers and the skip adapters to learn, so the sweep then compares the routing decisions alone.

This writes OUT/base-model, the workspace's base model with one twin's stage-2 tensors loaded (the twin's folder
under ``.runs/roe-sweep/twin/<key>/seed-N/warm``; a transformers folder: ``save_pretrained`` beside the base
folder's other files), and OUT/workspace over it and the workspace's data, with the workspace's stage defaults
except route-train's ``stage2_mode: frozen`` and ``warm_start: false``. Then, for example:

    TWIN=roe-deep/workspace/.runs/roe-sweep/twin/<key>/seed-42/warm
    python bench/roe_frozen_twin.py -w roe-deep/workspace --twin $TWIN --out roe-frozen
    dmole route-sweep -w roe-frozen/workspace --target 0.5 --seed 42 --seed 43

The dense reference of that sweep is the twin itself (a frozen stage 2 trains nothing when no layer is skipped).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from dmole.stages.init import create_workspace
from dmole.stages.project import Project
from dmole.stages.registry import ROUTE_TRAIN
from dmole.stages.roe.backbone import load_stage2

WEIGHTS = ("*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-w", "--workspace", type=Path, required=True, help="the workspace whose twin is frozen")
    parser.add_argument("--twin", type=Path, required=True, help="the twin's folder of stage-2 tensors (`warm`)")
    parser.add_argument("--out", type=Path, required=True, help="new folder: base-model/ and workspace/")
    args = parser.parse_args()
    if args.out.exists():
        parser.error(f"{args.out} already exists")
    project = Project.open(args.workspace)
    adapter = project.load_model()
    load_stage2(lambda name: args.twin / name, adapter, "full")
    model = args.out / "base-model"
    shutil.copytree(project.model_path, model, ignore=shutil.ignore_patterns(*WEIGHTS))
    adapter.model.save_pretrained(model)
    stages = {name: dict(options) for name, options in project.config.stages.items()}
    stages[ROUTE_TRAIN.name] = stages.get(ROUTE_TRAIN.name, {}) | {"stage2_mode": "frozen", "warm_start": False}
    create_workspace(args.out / "workspace", model=model, data=project.data_root, stages=stages)
    print(f"wrote {model} (the twin) and {args.out / 'workspace'} (route-train: stage 2 frozen, no warm start)")


if __name__ == "__main__":
    main()
