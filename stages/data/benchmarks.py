"""Benchmark presets: a paper's task registry as data, so `dmole init --benchmark NAME` needs no tasks.json.

``dmole`` is the official D-MoLE benchmark (Ge et al., ICML 2025), nine tasks in the paper's order, read
from the official data archive exactly as distributed. Every value below was read from the official
implementation, github.com/gcd19/D-MoLE at commit 0725cd3 (the same files as the initial commit dec92aa);
each comment names the file it comes from:

- ``scripts/train/dmole.sh``: the task order, each task's meta file, per-device batch size and epochs
  (``TASK_CONFIGS = "name:meta:batch_size:epochs"``), ``CUDA_VISIBLE_DEVICES=0,...,7`` (8 GPUs, so the
  global batch is per-device x 8; ``--gradient_accumulation_steps 1``) and the evaluation datasets;
- ``shell/dmole/<task>.json``: the training annotation file (``annotation``), its root (``"."``: image
  paths are relative to the folder that holds ``data/``) and ``repeat_time``;
- ``evaluate.sh``: which evaluation script and ``--datasets`` key serve each evaluation dataset;
- ``eval/caption/evaluate_caption.py``, ``eval/refcoco/evaluate_grounding.py``, ``eval/vqa/evaluate_vqa.py``,
  ``eval/vqa/evaluate_multi_choice.py``: their ``ds_collections`` (evaluation files, image roots,
  ``max_new_tokens`` / ``min_new_tokens``) and the prompt each builds.

The data root (``dmole init --data``) is the folder that holds the archive's ``data/`` folder: the
reference runs from that folder, and every path in its scripts and inside its annotation files starts
with ``data/``.

``batch_size`` in dmole is the GLOBAL batch of one optimizer step (all devices together), so the preset
records per-device x 8; each task's description keeps the per-device value and the GPU count. The per-device
batch is also the task's ``vote_size`` (train-task's batch vote is taken per device batch, as the reference's),
and ``eval_batch_size`` is the reference's evaluation batch, which eval's batch vote runs over.

``ucit`` and ``mllm-dcl`` are declared in mcitlib_benchmarks.py, with MCITlib's files as their sources, and
``coin`` in coin_benchmark.py, with CoIN's.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import ConfigError, TaskSpec
from .coin_benchmark import COIN_TASKS
from .mcitlib_benchmarks import DCL_TASKS, UCIT_TASKS

REFERENCE = "github.com/gcd19/D-MoLE@0725cd3"
REFERENCE_GPUS = 8  # scripts/train/dmole.sh: CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7; GPUS = 8

# The evaluation batch per process, which the reference's batch vote is taken over. dmole.sh evaluates every task
# after each training stage (`evaluate.sh $OUTPUT_DIR $dataset --dynamic`, no --batch-size; README: "Evaluation is
# enabled by default in the training scripts"), so each evaluation script's own argparse default applies; the
# standalone run_eval.sh passes 16 or 8 per task instead ("task:dataset:batch" in its TASKS).
CAPTION_EVAL_BATCH = 10  # eval/caption/evaluate_caption.py: --batch-size default=10
GROUNDING_EVAL_BATCH = 10  # eval/refcoco/evaluate_grounding.py: --batch-size default=10
VQA_EVAL_BATCH = 8  # eval/vqa/evaluate_vqa.py: --batch-size default=8
CHOICE_EVAL_BATCH = 8  # eval/vqa/evaluate_multi_choice.py: --batch-size default=8

# Evaluation prompts, as the official scripts build them (the user text after the image).
CAPTION_PROMPT = "Provide a one-sentence caption for the provided image."  # eval/caption/evaluate_caption.py
# eval/refcoco/evaluate_grounding.py: prompt = "Please provide ... <ref>{}</ref>", and for skvg_test
# prompt = "Based on the knowledge {}.\n" + prompt, formatted with (knowledge, sent).
SKVG_PROMPT = (
    "Based on the knowledge {knowledge}.\n"
    "Please provide the bounding box coordinate of the region this sentence describes: <ref>{sent}</ref>"
)
# eval/vqa/evaluate_multi_choice.py: question + "\n" + "A. c1\nB. c2..." + "\n" + prompt.
CHOICE_PROMPT = "{question}\n{choices}\nAnswer with the option's letter from the given choices directly."
# eval/vqa/evaluate_vqa.py: question + " " + base_prompt (ocrvqa_val, kvqa_test).
SHORT_PROMPT = "{question} Answer the question using a single word or phrase."
# eval/vqa/evaluate_vqa.py: question + " " + vizwiz_prompt + base_prompt ("vizwiz" in the dataset name).
VIZWIZ_PROMPT = (
    "{question} When the provided information is insufficient, respond with 'Unanswerable'. "
    "Answer the question using a single word or phrase."
)


def _reference(per_device: int, epochs: int, length: int, meta: str, evaluation: str) -> str:
    return (
        f"reference: {epochs} epoch(s), per-device batch {per_device} x {REFERENCE_GPUS} GPUs = global "
        f"{per_device * REFERENCE_GPUS} (scripts/train/dmole.sh); {length:,} training samples ({meta}); "
        f"evaluation {evaluation} (evaluate.sh)"
    )


DMOLE_TASKS: tuple[TaskSpec, ...] = (
    TaskSpec(
        name="vizwiz-caption",  # dmole.sh task "vizwiz_caption"; its meta key and folder are "vizwiz-caption"
        family="caption",  # evaluate.sh caption-vizwiz-val -> eval/caption/evaluate_caption.py (CIDEr)
        train="data/vizwiz-caption/train.jsonl",  # shell/dmole/vizwiz_caption.json "annotation"
        eval="data/vizwiz-caption/val.json",  # evaluate_caption.py ds_collections["vizwiz-caption-val"]
        eval_image_root="data/vizwiz-caption/images/val",  # evaluate_caption.py: its "root"
        prompt=CAPTION_PROMPT,
        max_new_tokens=30,
        min_new_tokens=8,  # evaluate_caption.py ds_collections["vizwiz-caption-val"]
        epochs=1,
        batch_size=10 * REFERENCE_GPUS,  # dmole.sh "vizwiz_caption:...:10:1"
        vote_size=10,  # the per-device batch each training vote is taken over
        eval_batch_size=CAPTION_EVAL_BATCH,
        repeat=1,  # shell/dmole/vizwiz_caption.json "repeat_time"
        description="VizWiz-Captions, val split, CIDEr. "
        + _reference(10, 1, 117_155, "shell/dmole/vizwiz_caption.json", "caption-vizwiz-val"),
    ),
    TaskSpec(
        name="skvg",  # dmole.sh task "skvg"
        family="grounding",  # evaluate.sh grouding-skvg-test -> eval/refcoco/evaluate_grounding.py (P@IoU0.5)
        train="data/sk-vg/train.jsonl",  # shell/dmole/skvg.json "annotation"
        eval="data/sk-vg/test.jsonl",  # evaluate_grounding.py ds_collections["skvg_test"]
        prompt=SKVG_PROMPT,  # evaluate_grounding.py evaluate_chat_model()
        max_new_tokens=100,
        min_new_tokens=1,  # evaluate_grounding.py generation_config
        epochs=5,
        batch_size=10 * REFERENCE_GPUS,  # dmole.sh "skvg:...:10:5"
        vote_size=10,  # the per-device batch each training vote is taken over
        eval_batch_size=GROUNDING_EVAL_BATCH,
        repeat=1,  # shell/dmole/skvg.json "repeat_time"
        description="SK-VG (knowledge-based visual grounding), test split, P@IoU0.5. "
        + _reference(10, 5, 23_404, "shell/dmole/skvg.json", "grouding-skvg-test"),
    ),
    TaskSpec(
        name="textcaps",  # dmole.sh task "textcaps"
        family="caption",  # evaluate.sh caption-textcaps-val -> eval/caption/evaluate_caption.py
        train="data/textcaps/train.jsonl",  # shell/dmole/textcaps.json "annotation"
        eval="data/textcaps/val.json",  # evaluate_caption.py ds_collections["textcaps-val"]
        eval_image_root="data/textcaps/images",  # evaluate_caption.py: its "root"
        prompt=CAPTION_PROMPT,
        max_new_tokens=30,
        min_new_tokens=8,  # evaluate_caption.py ds_collections["textcaps-val"]
        epochs=1,
        batch_size=10 * REFERENCE_GPUS,  # dmole.sh "textcaps:...:10:1"
        vote_size=10,  # the per-device batch each training vote is taken over
        eval_batch_size=CAPTION_EVAL_BATCH,
        repeat=1,  # shell/dmole/textcaps.json "repeat_time"
        description="TextCaps, val split, CIDEr. "
        + _reference(10, 1, 109_765, "shell/dmole/textcaps.json", "caption-textcaps-val"),
    ),
    TaskSpec(
        name="iconqa",  # dmole.sh task "iconqa"
        family="choice",  # evaluate.sh vqa-iconqa-test -> eval/vqa/evaluate_multi_choice.py (letter accuracy)
        train="data/iconqa/multi_text_choice_train.jsonl",  # shell/dmole/iconqa.json "annotation"
        eval="data/iconqa/multi_text_choice_test.jsonl",  # evaluate_multi_choice.py ds_collections["iconqa_test"]
        prompt=CHOICE_PROMPT,
        max_new_tokens=10,
        min_new_tokens=1,  # evaluate_multi_choice.py ds_collections["iconqa_test"]
        epochs=1,
        batch_size=10 * REFERENCE_GPUS,  # dmole.sh "iconqa:...:10:1"
        vote_size=10,  # the per-device batch each training vote is taken over
        eval_batch_size=CHOICE_EVAL_BATCH,
        repeat=5,  # shell/dmole/iconqa.json "repeat_time": 5
        description="IconQA (multiple-text-choice), test split, letter accuracy; the training set is repeated "
        "5 times per epoch (shell/dmole/iconqa.json repeat_time). "
        + _reference(10, 1, 18_946, "shell/dmole/iconqa.json", "vqa-iconqa-test"),
    ),
    TaskSpec(
        name="ocrvqa",  # dmole.sh task "ocrvqa"
        family="short",  # evaluate.sh vqa-ocrvqa-val -> eval/vqa/evaluate_vqa.py, metric "accuracy" (exact match)
        train="data/ocrvqa/train.jsonl",  # shell/dmole/ocrvqa.json "annotation"
        eval="data/ocrvqa/ocrvqa_val.jsonl",  # evaluate_vqa.py ds_collections["ocrvqa_val"]["test"]
        prompt=SHORT_PROMPT,
        max_new_tokens=100,  # evaluate_vqa.py ds_collections["ocrvqa_val"]
        min_new_tokens=1,  # evaluate_vqa.py generation_config
        epochs=1,
        batch_size=8 * REFERENCE_GPUS,  # dmole.sh "ocrvqa:...:8:1"
        vote_size=8,  # the per-device batch each training vote is taken over
        eval_batch_size=VQA_EVAL_BATCH,
        repeat=1,  # shell/dmole/ocrvqa.json "repeat_time"
        description="OCR-VQA, val split, exact match. "
        + _reference(8, 1, 166_043, "shell/dmole/ocrvqa.json", "vqa-ocrvqa-val"),
    ),
    TaskSpec(
        name="flickr30k",  # dmole.sh task "flickr30k"
        family="caption",  # evaluate.sh caption-flickr30k -> eval/caption/evaluate_caption.py
        train="data/flickr30k/train.jsonl",  # shell/dmole/flickr30k.json "annotation"
        eval="data/flickr30k/flickr30k_test_karpathy.json",  # evaluate_caption.py ds_collections["flickr30k"]
        eval_image_root="data/flickr30k",  # evaluate_caption.py: its "root" ("data/flickr30k/")
        prompt=CAPTION_PROMPT,
        max_new_tokens=30,
        min_new_tokens=8,  # evaluate_caption.py ds_collections["flickr30k"]
        epochs=1,
        batch_size=10 * REFERENCE_GPUS,  # dmole.sh "flickr30k:...:10:1"
        vote_size=10,  # the per-device batch each training vote is taken over
        eval_batch_size=CAPTION_EVAL_BATCH,
        repeat=1,  # shell/dmole/flickr30k.json "repeat_time"
        description="Flickr30k, Karpathy test split, CIDEr. "
        + _reference(10, 1, 145_000, "shell/dmole/flickr30k.json", "caption-flickr30k"),
    ),
    TaskSpec(
        name="vizwiz",  # dmole.sh task "vizwiz"
        family="vqa10",  # evaluate.sh vqa-vizwiz-val -> eval/vqa/evaluate_vqa.py, metric "vqa_score"
        train="data/vizwiz/train.jsonl",  # shell/dmole/vizwiz.json "annotation"
        # evaluate_vqa.py ds_collections["vizwiz_val"]: questions and images from "test", the ten answers per
        # question from "annotation", matched by question_id ("question" is listed there but never read).
        eval="data/vizwiz/vizwiz_val.jsonl",
        eval_annotations="data/vizwiz/vizwiz_val_annotations.json",
        prompt=VIZWIZ_PROMPT,
        max_new_tokens=10,  # evaluate_vqa.py ds_collections["vizwiz_val"]
        min_new_tokens=1,  # evaluate_vqa.py generation_config
        epochs=5,
        batch_size=10 * REFERENCE_GPUS,  # dmole.sh "vizwiz:...:10:5"
        vote_size=10,  # the per-device batch each training vote is taken over
        eval_batch_size=VQA_EVAL_BATCH,
        repeat=1,  # shell/dmole/vizwiz.json "repeat_time"
        description="VizWiz-VQA, val split, VQA accuracy (ten answers). "
        + _reference(10, 5, 20_523, "shell/dmole/vizwiz.json", "vqa-vizwiz-val"),
    ),
    TaskSpec(
        name="kvqa",  # dmole.sh task "kvqa"
        family="short",  # evaluate.sh vqa-kvqa-test -> eval/vqa/evaluate_vqa.py, metric "accuracy" (exact match)
        train="data/kvqa/train.jsonl",  # shell/dmole/kvqa.json "annotation"
        eval="data/kvqa/test.jsonl",  # evaluate_vqa.py ds_collections["kvqa_test"]["test"]
        prompt=SHORT_PROMPT,
        max_new_tokens=100,  # evaluate_vqa.py ds_collections["kvqa_test"]
        min_new_tokens=1,  # evaluate_vqa.py generation_config
        epochs=1,
        batch_size=10 * REFERENCE_GPUS,  # dmole.sh "kvqa:...:10:1"
        vote_size=10,  # the per-device batch each training vote is taken over
        eval_batch_size=VQA_EVAL_BATCH,
        repeat=1,  # shell/dmole/kvqa.json "repeat_time"
        description="KVQA, test split, exact match. "
        + _reference(10, 1, 146_408, "shell/dmole/kvqa.json", "vqa-kvqa-test"),
    ),
    TaskSpec(
        name="pmcvqa",  # dmole.sh task "pmcvqa"
        family="choice",  # evaluate.sh vqa-pmcvqa-test-clean -> eval/vqa/evaluate_multi_choice.py
        train="data/pmcvqa/train.jsonl",  # shell/dmole/pmcvqa.json "annotation"
        eval="data/pmcvqa/test_clean.jsonl",  # evaluate_multi_choice.py ds_collections["pmcvqa_test_clean"]
        prompt=CHOICE_PROMPT,
        max_new_tokens=10,
        min_new_tokens=1,  # evaluate_multi_choice.py ds_collections["pmcvqa_test_clean"]
        epochs=1,
        batch_size=10 * REFERENCE_GPUS,  # dmole.sh "pmcvqa:...:10:1"
        vote_size=10,  # the per-device batch each training vote is taken over
        eval_batch_size=CHOICE_EVAL_BATCH,
        repeat=1,  # shell/dmole/pmcvqa.json "repeat_time"
        description="PMC-VQA, test_clean split, letter accuracy. "
        + _reference(10, 1, 176_948, "shell/dmole/pmcvqa.json", "vqa-pmcvqa-test-clean"),
    ),
)


@dataclass(frozen=True)
class Benchmark:
    name: str
    summary: str
    tasks: tuple[TaskSpec, ...]
    # A path every archive has, relative to the data root: checked by `dmole init` to catch a wrong --data.
    marker: str


BENCHMARKS: dict[str, Benchmark] = {
    "dmole": Benchmark(
        name="dmole",
        summary="the D-MoLE paper's 9 tasks from the official data archive (--data: the folder holding data/)",
        tasks=DMOLE_TASKS,
        marker="data",
    ),
    "ucit": Benchmark(
        name="ucit",
        summary="UCIT's 6 tasks as MCITlib distributes them (--data: the folder holding UCIT/)",
        tasks=UCIT_TASKS,
        marker="UCIT",
    ),
    "mllm-dcl": Benchmark(
        name="mllm-dcl",
        summary="MLLM-CL's 5 domain tasks as MCITlib distributes them (--data: the folder holding Domain_data/)",
        tasks=DCL_TASKS,
        marker="Domain_data",
    ),
    "coin": Benchmark(
        name="coin",
        summary="CoIN's 8 tasks as its repository lays them out (--data: the folder holding playground/ and "
        "cl_dataset/)",
        tasks=COIN_TASKS,
        marker="playground",
    ),
}


def benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark {name!r}; known benchmarks: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


def benchmark_list() -> str:
    """One line per preset for --help."""
    return "; ".join(f"{b.name}: {b.summary}" for b in BENCHMARKS.values())
