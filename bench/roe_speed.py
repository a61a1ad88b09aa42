"""RoE generation speed at batch 1 (spec roe.md §6.3): dense, forced-execute and routed, one code path.

All three runs call ``model.generate`` on the same model object with RoE attached: dense runs with no
routing plan (the routed layers fall through to their own forward), forced-execute with a plan that
executes every layer (the wrapper's overhead), routed with a plan that skips a fixed set of layers
(``--skip-ratio`` of the routable ones, evenly spread; random weights make learned decisions
meaningless, and a fixed set makes the realised rate exact). Greedy decoding, ``min_new_tokens`` =
``max_new_tokens``, warm-up first, the median of ``--repeats`` timings.

Theoretical saving: (1 − C_adapter/C_layer)·skip_rate_all · T_dec, with T_dec the decoder-stack time of
the dense run (timed by hooks on the first and last LM layer, installed in every run) and the costs from
stages/roe/cost.py at the mean attended context. Criterion: measured ≥ 0.8 × theoretical.

    python bench/roe_speed.py --json bench-roe.json
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
from PIL import Image

from dmole.stages.device import cpu_name
from dmole.stages.models.registry import load_family
from dmole.stages.models.tiny import TinySize, build_tiny
from dmole.stages.roe.attach import attach, roe_shape
from dmole.stages.roe.cost import theoretical_saving
from dmole.stages.roe.modules import RoEModules
from dmole.stages.roe.plan import RoutingPlan
from dmole.stages.roe.speed import timed_generate
from emit import emit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=11, help="LM layers (11: 10 routable, so ρ = 0.3 is 3)")
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--intermediate", type=int, default=2048)
    parser.add_argument("--skip-ratio", type=float, default=0.3)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    size = TinySize(
        lm_layers=args.layers,
        lm_hidden=args.hidden,
        lm_heads=args.heads,
        lm_kv_heads=args.kv_heads,
        lm_intermediate=args.intermediate,
    )
    with tempfile.TemporaryDirectory() as folder:
        model = build_tiny("llava", Path(folder) / "model", size=size, byte_tokenizer=True)
        adapter = load_family(model, device=device)
    torch.manual_seed(0)
    attachment = attach(adapter, RoEModules(roe_shape(adapter, [0])))
    routable = attachment.modules.shape.routable
    n_skip = round(args.skip_ratio * len(routable))
    skipped = [routable[int((i + 0.5) * len(routable) / n_skip)] for i in range(n_skip)]
    inputs = adapter.generation_batch(
        [Image.new("RGB", (32, 32), "teal")], ["Describe the shape in the picture, its colour and where it is."]
    )
    plans = {
        "dense": lambda: None,
        "forced_execute": lambda: RoutingPlan.force_all(False, routable, 1),
        "routed": lambda: RoutingPlan(forced={l: torch.tensor([l in skipped]) for l in routable}),
    }
    with torch.no_grad():
        for make in plans.values():  # warm-up
            timed_generate(adapter, inputs, args.new_tokens, make())
        times = {name: [] for name in plans}
        for _ in range(args.repeats):
            for name, make in plans.items():  # interleaved, so drift hits every variant alike
                times[name].append(timed_generate(adapter, inputs, args.new_tokens, make()))
    median = {name: statistics.median(total for total, _ in values) for name, values in times.items()}
    decoder = {name: statistics.median(dec for _, dec in values) for name, values in times.items()}
    t_dec = decoder["dense"]

    skip_all = len(skipped) / len(adapter.language_layers())
    n_ctx = inputs["attention_mask"].sum().item() + args.new_tokens / 2
    cost = theoretical_saving(adapter.model.config.text_config, attachment.modules.shape.rank, skip_all, n_ctx)
    predicted_saving = cost["decoder_saving"] * t_dec
    measured_saving = median["dense"] - median["routed"]
    results = {
        "device": str(device) if device.type == "cuda" else f"cpu ({cpu_name()}, {args.threads} thread(s))",
        "torch": torch.__version__,
        "model": vars(args) | {"json": None},
        "routed_layers": list(routable),
        "skipped_layers": skipped,
        "skip_rate": len(skipped) / len(routable),
        "skip_rate_all_layers": skip_all,
        "seconds": median,
        "decoder_seconds": decoder,
        **cost,
        "predicted_seconds": median["dense"] - predicted_saving,
        "speedup_measured": median["dense"] / median["routed"],
        "speedup_theoretical": median["dense"] / (median["dense"] - predicted_saving),
        "saving_measured_over_theoretical": measured_saving / predicted_saving,
        "wrapper_overhead": median["forced_execute"] / median["dense"] - 1,
    }
    emit(results, args.json)


if __name__ == "__main__":
    main()
