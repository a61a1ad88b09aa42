"""The CoIN preset, as CoIN distributes and runs its benchmark (github.com/zackschen/CoIN@4122465).

Every value below was read from CoIN's LLaVA scripts; each comment names its file:

- ``scripts/LLaVA/Train/1_Science.sh`` ... ``8_OCRVQA.sh``: the task order (the scripts' numbers, each
  ``--previous_task_model_path`` the previous script's ``--output_dir``; the repository has no train_all script),
  ``--data_path ./playground/Instructions_Original/<Task>/train.json``, ``--image_folder ./cl_dataset``,
  ``--num_train_epochs``, ``--per_device_train_batch_size`` and ``--gradient_accumulation_steps 8`` on
  ``deepspeed --include localhost:0,...,7`` (8 GPUs): one optimizer step sees per-device x 8 x 8 samples (dmole's
  ``batch_size`` is that global batch);
- ``scripts/LLaVA/Eval/<n>_eval_*.sh``: each task's question file (``--question-file``), its generation script
  (``ETrain/Eval/LLaVA/CoIN/model_*.py``, ``--temperature 0``: greedy) and its scoring script and files;
- ``ETrain/Eval/LLaVA/CoIN/model_*.py``: the prompt (the question file's ``text``, whole; model_vqa_science.py
  removes ``<image>`` from it) and ``max_new_tokens`` (no minimum).

The data root (``dmole init --data``) is the folder CoIN's scripts run from: it holds ``playground/`` (the
instructions from huggingface.co/datasets/Zacks-Chen/CoIN, README.md "Dataset") and ``cl_dataset/`` (the
images, and the original datasets' files three scoring scripts read). Training files are LLaVA chat lists, the
question files lists of ``{question_id, image, text, answer}`` (grounding: ``answer_bbox`` and ``size``).

Each task is named as CoIN's instruction folder, which is how the field's graders pick CoIN's rule
(``coin_rules.TASK_RULES``, ``rule_for("coin", task.family, task.name)``). CoIN's scoring is reproduced except:
ScienceQA's text-only problems are left out (``skip_text_only``), where eval_science_qa.py divides by the whole
test split of ``pid_splits.json``; CoIN also reports an LLM-judged score (``create_prompt.py``), not computed here.
"""

from __future__ import annotations

from ..config import TaskSpec

REFERENCE = "github.com/zackschen/CoIN@4122465"
REFERENCE_GPUS = 8  # scripts/LLaVA/Train/*.sh: deepspeed --include localhost:0,1,2,3,4,5,6,7
GRAD_ACCUM = 8  # scripts/LLaVA/Train/*.sh: --gradient_accumulation_steps 8
INSTRUCTIONS = "playground/Instructions_Original"  # scripts/LLaVA/Train/*.sh --data_path, Eval/*.sh --question-file
IMAGES = "cl_dataset"  # --image_folder ./cl_dataset (training and evaluation)
PROMPT = "{text}"  # model_*.py: qs = line["text"] (model_vqa_science.py without its "<image>")

# max_new_tokens: model_vqa.py and model_vqa_science.py hard-code 1024; model_text_vqa.py, model_gqa.py,
# model_vizwiz.py and model_ocr_vqa.py take --max_new_tokens, default 128, which the Eval scripts do not pass.
LONG_REPLY = 1024
SHORT_REPLY = 128


def _task(
    name: str,
    family: str,
    per_device: int,
    evaluation: str,
    max_new_tokens: int,
    summary: str,
    *,
    question_file: str = "test.json",
    annotations: str | None = None,
    skip_text_only: bool = False,
) -> TaskSpec:
    """A CoIN task: Train/<n>_<Task>.sh (1 epoch each) and Eval/<n>_eval_*.sh (``evaluation``, its scripts)."""
    folder = f"{INSTRUCTIONS}/{name}"
    global_batch = per_device * REFERENCE_GPUS * GRAD_ACCUM
    return TaskSpec(
        name=name,
        family=family,
        train=f"{folder}/train.json",
        eval=f"{folder}/{question_file}",
        eval_annotations=annotations,
        image_root=IMAGES,
        prompt=PROMPT,
        max_new_tokens=max_new_tokens,
        min_new_tokens=0,
        epochs=1,  # --num_train_epochs 1 in every Train script
        batch_size=global_batch,
        skip_text_only=skip_text_only,
        description=(
            f"{summary} reference: 1 epoch, per-device batch {per_device} x {REFERENCE_GPUS} GPUs x {GRAD_ACCUM} "
            f"accumulation = global {global_batch} (scripts/LLaVA/Train); evaluation {evaluation}"
        ),
    )


COIN_TASKS: tuple[TaskSpec, ...] = (
    _task(
        "ScienceQA",
        "choice",  # eval_science_qa.py: the reply's letter against the gold index among the problem's choices
        14,  # Train/1_Science.sh --per_device_train_batch_size 14
        "model_vqa_science.py + eval_science_qa.py on cl_dataset/ScienceQA (1_eval_sqa.sh)",
        LONG_REPLY,
        "ScienceQA, image problems, letter accuracy; the text-only problems are left out.",
        annotations=f"{IMAGES}/ScienceQA/problems.json",  # eval_science_qa.py --base-dir ./cl_dataset/ScienceQA
        skip_text_only=True,
    ),
    _task(
        "TextVQA",
        "vqa10",  # eval_textvqa.py: m4c_evaluator's TextVQAAccuracyEvaluator over the ten answers
        14,  # Train/2_TextVQA.sh
        "model_text_vqa.py + eval_textvqa.py (2_eval_textqa.sh)",
        SHORT_REPLY,
        "TextVQA val, VQA accuracy over the dataset's ten answers.",
        question_file="val.json",  # 2_eval_textqa.sh --question-file .../TextVQA/val.json
        annotations=f"{IMAGES}/TextVQA/TextVQA_0.5.1_val.json",  # 2_eval_textqa.sh --annotation-file
    ),
    _task(
        "ImageNet",
        "short",  # eval_ImagetNet.py: the gold label in the reply or the reply in the label
        16,  # Train/3_ImageNet.sh
        # 3_eval_ImageNet.sh generates from ./layground/... (sic); it scores against playground/.../test.json
        "model_vqa.py + eval_ImagetNet.py (3_eval_ImageNet.sh)",
        LONG_REPLY,
        "ImageNet classification as QA.",
    ),
    _task(
        "GQA",
        "short",  # convert_gqa_for_eval.py then eval_gqa.py: the reply, trailing periods stripped, lower-cased
        6,  # Train/4_GQA.sh
        "model_gqa.py + eval_gqa.py --tier testdev_balanced (4_eval_gqa.sh)",
        SHORT_REPLY,
        "GQA testdev-balanced, exact match with GQA's own answers.",
        annotations=f"{IMAGES}/GQA/testdev_balanced_questions.json",  # eval_gqa.py: ./cl_dataset/GQA/{tier}_questions
    ),
    _task(
        "VizWiz",
        "short",  # eval_vizwiz.py: upper-cased reply equals the upper-cased answer of val.json
        14,  # Train/5_VizWiz.sh
        "model_vizwiz.py + eval_vizwiz.py (5_eval_vizwiz.sh)",
        SHORT_REPLY,
        "VizWiz-VQA val, exact match with CoIN's one answer.",
        question_file="val.json",  # 5_eval_vizwiz.sh --question-file and --annotation-file
    ),
    _task(
        "Grounding",
        "grounding",  # eval_grounding.py: IoU > 0.5 in the padded square's 0-1 coordinates
        6,  # Train/6_Grounding.sh
        "model_vqa.py + eval_grounding.py (6_eval_grounding.sh)",
        LONG_REPLY,
        "RefCOCO, RefCOCO+ and RefCOCOg, box hit at IoU 0.5 in the padded square.",
    ),
    _task(
        "VQAv2",
        "short",  # eval_vqav2.py: upper-cased reply equals the upper-cased answer of val.json
        8,  # Train/7_vqav2.sh
        "model_vqa.py + eval_vqav2.py (7_eval_vqav2.sh)",
        LONG_REPLY,
        "VQAv2 val, exact match with CoIN's one answer.",
        question_file="val.json",  # 7_eval_vqav2.sh --question-file and --annotation-file
    ),
    _task(
        "OCRVQA",
        "short",  # eval_ocrvqa.py: lower-cased equality; a reply containing "Unanswerable" scores 0
        10,  # Train/8_OCRVQA.sh
        "model_ocr_vqa.py + eval_ocrvqa.py (8_eval_ocrvqa.sh)",
        SHORT_REPLY,
        "OCR-VQA, exact match.",
    ),
)
