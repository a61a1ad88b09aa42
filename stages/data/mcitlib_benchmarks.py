"""The UCIT and MLLM-DCL presets, as MCITlib v3 distributes and runs them (github.com/Ghy0501/MCITlib@2956dfd).

Every value below was read from MCITlib's LoRA-FT baseline (each method's copy of these files is the same); each
comment names its file, relative to ``LoRA-FT/``:

- ``scripts/CoIN/Train_UCIT/train_all.sh``, ``scripts/CoIN/Train_DCL/train_all.sh``: the task order (TaskN.sh
  with ``configs/data_configs/<benchmark>/<task>.json``);
- ``configs/data_configs/UCIT/<task>.json``, ``configs/data_configs/MLLM-DCL/<task>.json``: ``train_path``,
  ``test_path`` and ``image_folder`` (``/your_path/UCIT/<task>/train.json``, ``.../test.json``,
  ``/your_path/UCIT/datasets``; ``/your_path/Domain_data/<task>/...`` with the task's own folder for images);
- ``configs/model_configs/LLaVA/<benchmark>/train/taskN.json``: ``gpu_num`` 8, ``batch_size`` (per device) 4,
  ``grad_acc`` 2 and ``epoch``; ``scripts/CoIN/Train_*/TaskN.sh`` passes them to deepspeed as
  ``--per_device_train_batch_size`` and ``--gradient_accumulation_steps``, so one optimizer step sees 4 x 8 x 2
  = 64 samples (dmole's ``batch_size`` is that global batch);
- ``scripts/CoIN/Eval_UCIT/eval_<task>.sh``, ``scripts/CoIN/Eval_MLLM_DCL/eval_<task>.sh``: which generation
  script (``llava/eval/CoIN/model_*.py``) and which scoring script serve each task;
- ``llava/eval/CoIN/model_others.py`` (UCIT), ``model_ai2d.py`` (RS, AD, Sci), ``model_pvqa.py`` (Med),
  ``model_fin.py`` (Fin): the prompt (the question file's ``text``, whole, plus the script's suffix) and
  ``max_new_tokens`` (no ``min_new_tokens``; greedy, ``--temperature 0``).

The data root (``dmole init --data``) is MCITlib's ``/your_path``: the folder holding ``UCIT/`` and
``Domain_data/`` (README.md, "Benchmarks"). Training files are LLaVA chat lists, test files lists of
``{question_id, image, text, answer}``; both are read as distributed (stages/data/training_file.py,
eval_files.py: a ``{text}`` prompt, as LLaVA's and CoIN's question files need).

Each task is named as MCITlib's folder, which is how the field's graders (stages/metrics/field_graders.py,
``mcitlib_rules.TASK_RULES``) pick its rule: ``rule_for("mcitlib", task.family, task.name)``.
"""

from __future__ import annotations

from ..config import TaskSpec

REFERENCE = "github.com/Ghy0501/MCITlib@2956dfd"
REFERENCE_GPUS = 8  # configs/model_configs/LLaVA/*/train/taskN.json "gpu_num": 8
PER_DEVICE_BATCH = 4  # configs/model_configs/LLaVA/*/train/taskN.json "batch_size": 4
GRAD_ACCUM = 2  # configs/model_configs/LLaVA/*/train/taskN.json "grad_acc": 2
GLOBAL_BATCH = PER_DEVICE_BATCH * REFERENCE_GPUS * GRAD_ACCUM

# llava/eval/CoIN/model_others.py: generate(..., max_new_tokens=256), hard-coded; the prompt is line["text"].
OTHERS_MAX_NEW_TOKENS = 256
# model_ai2d.py, model_pvqa.py, model_fin.py: --max_new_tokens default=128 (the eval_*.sh scripts pass none).
DCL_MAX_NEW_TOKENS = 128
TEXT_PROMPT = "{text}"  # model_others.py, model_ai2d.py: qs = line["text"]
# model_pvqa.py: qs = line["text"] + ' Answer the question with a single word (or phrase).'
PVQA_PROMPT = "{text} Answer the question with a single word (or phrase)."

# HiDe-LLaVA's README ("UCIT Benchmark", github.com/Ghy0501/HiDe-LLaVA@4dd0793) names the caption tasks' COCO
# ground truth; MCITlib's eval_vizwiz.sh and eval_flickr30k.sh read it as the data config's "anno_path", which
# its configs do not set, so the file is expected beside test.json.
CAPTION_ANNOTATIONS = "val_coco_type_3000.json"


def _description(summary: str, epochs: int, train_config: str, evaluation: str) -> str:
    return (
        f"{summary} reference: {epochs} epoch(s), per-device batch {PER_DEVICE_BATCH} x {REFERENCE_GPUS} GPUs "
        f"x {GRAD_ACCUM} accumulation = global {GLOBAL_BATCH} ({train_config}); evaluation {evaluation}"
    )


def _ucit(name: str, family: str, summary: str, evaluation: str) -> TaskSpec:
    """A UCIT task: configs/data_configs/UCIT/<name>.json; 1 epoch (configs/model_configs/LLaVA/UCIT/train/)."""
    folder = f"UCIT/{name}"
    return TaskSpec(
        name=name,
        family=family,
        train=f"{folder}/train.json",
        eval=f"{folder}/test.json",  # data config train_path, test_path
        eval_annotations=f"{folder}/{CAPTION_ANNOTATIONS}" if family == "caption" else None,
        image_root="UCIT/datasets",  # data config image_folder
        prompt=TEXT_PROMPT,
        max_new_tokens=OTHERS_MAX_NEW_TOKENS,  # model_others.py
        min_new_tokens=0,  # model_others.py sets no minimum (dmole's caption default is 8)
        epochs=1,
        batch_size=GLOBAL_BATCH,  # model_configs/LLaVA/UCIT/train/taskN.json
        description=_description(summary, 1, "configs/model_configs/LLaVA/UCIT/train", evaluation),
    )


# scripts/CoIN/Train_UCIT/train_all.sh: Task1..6 = ImageNet-R, ArxivQA, VizWiz, IconQA, CLEVR-Math, Flickr30k.
UCIT_TASKS: tuple[TaskSpec, ...] = (
    _ucit(
        "ImageNet-R",
        "short",
        "ImageNet-R classification as QA, exact match.",
        "model_others.py + eval_deepseek_r1.py (scripts/CoIN/Eval_UCIT/eval_imagenet.sh)",
    ),
    _ucit(
        "ArxivQA",
        "short",
        "ArxivQA (scientific figures), exact match.",
        "model_others.py + eval_deepseek_r1.py (eval_arxivqa.sh)",
    ),
    _ucit(
        "VizWiz",
        "caption",
        "VizWiz-Captions, mean of BLEU-1..4, METEOR, ROUGE-L and CIDEr.",
        "model_others.py + eval_caption.py (eval_vizwiz.sh)",
    ),
    _ucit("IconQA", "short", "IconQA, exact match.", "model_others.py + eval_deepseek_r1.py (eval_iconqa.sh)"),
    _ucit("CLEVR-Math", "short", "CLEVR-Math, exact match.", "model_others.py + eval_deepseek_r1.py (eval_clevr.sh)"),
    _ucit(
        "Flickr30k",
        "caption",
        "Flickr30k captions, mean of BLEU-1..4, METEOR, ROUGE-L and CIDEr.",
        "model_others.py + eval_caption.py (eval_flickr30k.sh)",
    ),
)


def _dcl(name: str, epochs: int, prompt: str, summary: str, evaluation: str) -> TaskSpec:
    """An MLLM-DCL task: configs/data_configs/MLLM-DCL/<name>.json, images under the task's own folder."""
    folder = f"Domain_data/{name}"
    return TaskSpec(
        name=name,
        family="short",
        train=f"{folder}/train.json",
        eval=f"{folder}/test.json",  # data config train_path, test_path
        image_root=folder,  # data config image_folder
        prompt=prompt,
        max_new_tokens=DCL_MAX_NEW_TOKENS,
        min_new_tokens=0,  # no minimum in model_*.py
        epochs=epochs,
        batch_size=GLOBAL_BATCH,  # model_configs/LLaVA/MLLM-DCL/train/taskN.json
        description=_description(summary, epochs, "configs/model_configs/LLaVA/MLLM-DCL/train", evaluation),
    )


# scripts/CoIN/Train_DCL/train_all.sh: Task1..5 = RS, Med, AD, Sci, Fin; epochs from train/task1..5.json (1, 3, 1,
# 2, 1).
DCL_TASKS: tuple[TaskSpec, ...] = (
    _dcl("RS", 1, TEXT_PROMPT, "Remote sensing VQA.", "model_ai2d.py + eval_ai2d.py (eval_rs.sh)"),
    _dcl("Med", 3, PVQA_PROMPT, "Medical VQA.", "model_pvqa.py + eval_pvqa.py (eval_med.sh)"),
    _dcl("AD", 1, TEXT_PROMPT, "Autonomous-driving VQA.", "model_ai2d.py + eval_ai2d.py (eval_ad.sh)"),
    _dcl("Sci", 2, TEXT_PROMPT, "Science VQA (AI2D, TQA, MapQA, ...).", "model_ai2d.py + eval_sci.py (eval_sci.sh)"),
    # model_fin.py appends ' Only answer with yes or no directly.' when the GOLD answer is Yes or No, else ' Answer
    # with the given letter directly, e.g., A, B, C, D.': a prompt chosen by the answer, which a task template
    # cannot express, so dmole asks the question file's text alone.
    _dcl(
        "Fin",
        1,
        TEXT_PROMPT,
        "Financial chart VQA; MCITlib's answer-dependent prompt suffix is not applied.",
        "model_fin.py + eval_finvis.py (eval_fin.sh)",
    ),
)
