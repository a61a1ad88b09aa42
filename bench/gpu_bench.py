"""The GPU path at InternVL2-2B's shapes: train-task tokens/s and MFU, peak memory, embed and eval throughput.

The model is HF-native InternVL (``InternVLForConditionalGeneration``) with random weights and
InternVL2-2B's dimensions: an InternViT-300M vision tower (24 layers, width 1024, 16 heads, MLP 4096,
448 px images, patch 14, so 256 image tokens after the 2x2 merge) and a language model of
InternLM2-1.8B's size (24 layers, width 2048, 16 heads / 8 KV heads, MLP 8192, vocabulary 92,553;
HF-native InternVL takes a Qwen2 decoder, so it is a Qwen2 with those sizes). It loads as the toolkit
loads any model: bf16 weights on CUDA, ``flash_attention_2`` when flash-attn is importable, else
``sdpa``. The synthetic benchmark's `color-vqa` task at 448 px provides the samples.

Measured, through the toolkit's own code:
- train-task: a D-MoLE expert (LoRA rank 8 on every attention projection of both towers) trained by
  the training loop with bf16 autocast; the median step time after ``--warmup`` steps, tokens per
  second (every non-padding token of the batch, image tokens included) and model FLOPs utilisation,
  MFU = tokens/s x (4 N_frozen + 6 N_lora) / peak, attention FLOPs left out (a frozen weight costs
  its forward and the input gradient, a trained one also its weight gradient);
- the share of the timed steps the training thread spent waiting for inputs, with the inputs built inline on
  it (a first training run) and by ``--input-workers`` DataLoader workers ahead of the step (a second run,
  whose figures above are reported);
- peak GPU memory of the training runs (``torch.cuda.max_memory_allocated``);
- embed: samples/s of ``compute_embeddings``; eval: samples/s of ``predict`` with the expert routed;
- the D-MoLE step (the new expert on every attention projection, a frozen past expert on every other layer's
  routed into every sample) against a plain PEFT LoRA step with the same trainable parameters, at the
  methods' LoRA settings (`step_ratio.py`, interleaved).

    python bench/gpu_bench.py --json bench/results/gpu.json            # on a GPU machine
    python bench/gpu_bench.py --size tiny --steps 3 --warmup 1          # smoke run on a CPU

``--peak-tflops`` sets the device's dense bf16 peak when it is not in PEAK_TFLOPS.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from dmole.stages.config import TaskSpec
from dmole.stages.data.samples import TrainSample
from dmole.stages.data.synthetic import SynthSizes, write_benchmark
from dmole.stages.data.tasks import load_eval_samples, load_train_samples
from dmole.stages.device import device_name
from dmole.stages.dmole.experts import ExpertModel
from dmole.stages.embed import compute_embeddings
from dmole.stages.evaluation.predict import predict
from dmole.stages.methods.dmole import DMoLEHyper
from dmole.stages.methods.lora import towers
from dmole.stages.models.registry import load_family
from dmole.stages.models.tiny import TinySize, build_tiny
from dmole.stages.options import AllocateOptions
from dmole.stages.training.chat import chat_examples
from dmole.stages.training.inputs import GPU_WORKERS, InputPipeline
from dmole.stages.training.loop import LoopSettings, ParamGroup, train
from shapes import INTERNVL2_2B, INTERNVL2_2B_IMAGE
from step_ratio import attention_experts, step_ratio, sync

SIZES = {"internvl2-2b": (INTERNVL2_2B, INTERNVL2_2B_IMAGE), "tiny": (TinySize(), 32)}
# Dense bf16 peak (no sparsity), TFLOP/s, by a substring of torch.cuda.get_device_name().
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}
TASK = "color-vqa"


def _peak_tflops(given: float | None) -> float | None:
    if given or not torch.cuda.is_available():
        return given
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in PEAK_TFLOPS.items() if key in name), None)


class _StepClock:
    """Loop callback: a synchronised timestamp, and the input pipeline's waiting so far, at every step start."""

    def __init__(self, pipeline: InputPipeline) -> None:
        self.pipeline = pipeline
        self.stamps: list[float] = []
        self.waited: list[float] = []

    def on_step_begin(self, _step: int, _total: int, _optimizer) -> None:
        self.stamp()

    def stamp(self) -> None:
        sync()
        self.stamps.append(time.perf_counter())
        self.waited.append(self.pipeline.waited)

    def log_fields(self) -> dict[str, float]:
        return {}


def _data(root: Path, image_size: int, n_samples: int) -> tuple[TaskSpec, list[TrainSample], list]:
    registry = write_benchmark(
        root,
        sizes=SynthSizes(image_size=image_size, train_per_task=n_samples, test_per_task=n_samples, pretrain_samples=0),
    )
    task = TaskSpec(**next(entry for entry in registry if entry["name"] == TASK))
    return task, load_train_samples(root, task), load_eval_samples(root, task)


def bench_training(
    adapter, experts: ExpertModel, trainable: list, samples: list[TrainSample], args, workers: int
) -> dict:
    """Train ``experts``' expert 1 for warm-up plus timed steps, its inputs built by ``workers`` DataLoader
    workers (0: inline, on the training thread), through the toolkit's training loop."""
    model = experts.model
    n_lora = sum(p.numel() for p in trainable)
    n_frozen = sum(p.numel() for p in model.parameters()) - n_lora
    tokens: list[int] = []
    pipeline = InputPipeline(
        lambda indices: adapter.train_inputs(chat_examples([samples[i % len(samples)] for i in indices])),
        adapter.on_device,
        workers,
    )

    def loss_fn(prepared, indices, scope, batch):
        tokens.append(int(batch["attention_mask"].sum()))
        scope.enter_context(experts.routed([(1,)] * len(indices), vision_rows=adapter.vision_row_samples(batch)))
        return {"loss": prepared(**batch).loss}

    steps = args.warmup + args.steps
    settings = LoopSettings(epochs=1, batch_size=args.batch_size, lr=1e-4, warmup_ratio=0.0, precision="auto")
    clock = _StepClock(pipeline)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    model.train()
    train(
        model,
        [ParamGroup("expert", trainable)],
        loss_fn,
        steps * args.batch_size,
        settings,
        callbacks=[clock],
        inputs=pipeline,
    )
    clock.stamp()
    step_seconds = [b - a for a, b in zip(clock.stamps[args.warmup :], clock.stamps[args.warmup + 1 :])]
    median = statistics.median(step_seconds)
    tokens_per_second = statistics.median(tokens[args.warmup :]) / median
    flops_per_token = 4 * n_frozen + 6 * n_lora
    peak = _peak_tflops(args.peak_tflops)
    model.eval()
    timed = clock.stamps[-1] - clock.stamps[args.warmup]
    return {
        "input_workers": workers,
        "step_seconds_median": median,
        "input_wait_share": (clock.waited[-1] - clock.waited[args.warmup]) / timed,
        "tokens_per_step_median": statistics.median(tokens[args.warmup :]),
        "tokens_per_second": tokens_per_second,
        "model_flops_per_token": flops_per_token,
        "mfu": tokens_per_second * flops_per_token / (peak * 1e12) if peak else None,
        "peak_tflops": peak,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
        "frozen_parameters": n_frozen,
        "lora_parameters": n_lora,
    }


def _throughput(run, n: int) -> float:
    run()  # warm-up
    sync()
    start = time.perf_counter()
    run()
    sync()
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="internvl2-2b")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed first steps")
    parser.add_argument("--eval-samples", type=int, default=64)
    parser.add_argument(
        "--input-workers",
        type=int,
        default=GPU_WORKERS,
        help="DataLoader workers of the second training run (the first builds inputs inline)",
    )
    parser.add_argument("--ratio-repeats", type=int, default=5, help="interleaved rounds of the step comparison")
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    size, image_size = SIZES[args.size]
    with tempfile.TemporaryDirectory() as tmp:
        task, train_samples, eval_samples = _data(Path(tmp) / "data", image_size, max(args.eval_samples, 8))
        model_path = build_tiny("internvl", Path(tmp) / "model", size=size)
        adapter = load_family(model_path)
        device = adapter.model.device
        attention = adapter.model.config._attn_implementation
        items = [(s.id, s.image, s.question) for s in train_samples][: args.eval_samples]
        embed_rate = _throughput(lambda: compute_embeddings(adapter, items, args.batch_size), len(items))
        # embed runs on the base, before any expert
        experts = ExpertModel(adapter.model, towers(adapter))
        partner, modules = attention_experts(adapter)
        lora = DMoLEHyper().lora(AllocateOptions().rank)  # D-MoLE's expert LoRA at the default rank
        trainable = experts.add_expert(1, modules, replace(lora, dropout=0.0))
        inline, ahead = (
            bench_training(adapter, experts, trainable, train_samples, args, workers)
            for workers in (0, args.input_workers)
        )

        def router(indices, inputs):
            return experts.routed(
                [(1,)] * len(indices),
                vision_rows=adapter.vision_row_samples(inputs),
            )

        samples = eval_samples[: args.eval_samples]
        eval_rate = _throughput(
            lambda: predict(
                adapter, task, samples, batch_size=args.batch_size, model=experts.model, around_batch=router
            ),
            len(samples),
        )
        ratio = step_ratio(
            lambda: load_family(model_path),
            partner,
            modules,
            chat_examples(train_samples[: args.batch_size]),
            lora,
            args.ratio_repeats,
        )
    result = {
        "size": args.size,
        "device": device_name(device),
        "torch": torch.__version__,
        "dtype": str(adapter.model.dtype),
        "attention": attention,
        "batch_size": args.batch_size,
        **ahead,
        "input_wait_share_inline": inline["input_wait_share"],
        "step_seconds_median_inline": inline["step_seconds_median"],
        "embed_samples_per_second": embed_rate,
        "eval_samples_per_second": eval_rate,
        "eval_max_new_tokens": task.max_new_tokens,
        "training_step": ratio,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
