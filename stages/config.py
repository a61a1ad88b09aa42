"""Typed configuration: the workspace file, with its task registry, its stage defaults and its methods' settings.

A leaf: it knows no stage and no method. Its ``method``, ``stages`` and ``methods`` sections are checked against
the stage and method registries where both are known, when the workspace is opened (`resolve.check_workspace`).
Unknown stages, keys and methods are errors everywhere, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import UserError

WORKSPACE_FILE = "workspace.json"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
Family = Literal["caption", "vqa10", "short", "choice", "grounding"]
# "reference": the official implementation's choices as stage defaults (stages/profile.py declares them all)
Profile = Literal["dmole", "reference"]
# "pad": each image centred on a square of the processor's mean colour first (LLaVA-1.5 / RoE's
# --image_aspect_ratio pad); "processor": the processor's own resizing alone
ImageAspectRatio = Literal["processor", "pad"]

DEFAULT_PROMPTS: dict[str, str] = {
    "caption": "Provide a one-sentence caption for the provided image.",
    "grounding": "Please provide the bounding box coordinate of the region this sentence describes: <ref>{sent}</ref>",
    "choice": "{question}\n{choices}\nAnswer with the option's letter from the given choices directly.",
    "short": "{question} Answer the question using a single word or phrase.",
    "vqa10": "{question} When the provided information is insufficient, respond with 'Unanswerable'. "
    "Answer the question using a single word or phrase.",
}
DEFAULT_MAX_NEW_TOKENS = {"caption": 30, "grounding": 100, "choice": 10, "short": 100, "vqa10": 10}
DEFAULT_MIN_NEW_TOKENS = {"caption": 8}
# families whose answers may come from a separate file (eval_annotations)
PAIR_FAMILIES = ("vqa10", "caption", "short", "choice")


class ConfigError(UserError):
    """A bad configuration value or file, as one line."""


class Strict(BaseModel):
    # inf and nan are never a sensible setting: `--lr inf` or `--epochs nan` is refused where it is parsed
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _only_known_keys(cls, data: object) -> object:
        """An unknown key (a typo, most often) is refused with the known ones, so the fix is in the message."""
        if isinstance(data, dict) and (unknown := [key for key in data if key not in cls.model_fields]):
            known = ", ".join(cls.model_fields)
            raise ValueError(
                f"{unknown[0]}: unknown key; " + (f"the known ones are {known}" if known else "there are none to set")
            )
        return data


# torch, numpy and Python all accept a seed in this range (torch.manual_seed refuses a larger one)
SEED_LIMIT = 2**32
Seed = Annotated[int, Field(ge=0, lt=SEED_LIMIT)]


class TaskSpec(Strict):
    """One task of the registry (spec/dmole.md §15). Paths are relative to the data root."""

    name: str
    family: Family
    train: str
    eval: str
    # The pair forms: the answers in a separate file. vqa10: a VQAv2-style annotations JSON, matched to the
    # questions in ``eval`` by question_id (the reference's VizWiz evaluation reads its files this way).
    # caption: a COCO caption JSON whose image_id k holds the references of ``eval``'s k-th question (MCITlib's
    # eval_caption.py numbers its replies 1..N in the question file's order). short and choice: a JSON object
    # keyed by question id whose entries hold the answer fields (GQA's questions file, ScienceQA's problems.json).
    eval_annotations: str | None = None
    # A validation set in ``eval``'s format, held out from both the training and the test data: what `dmole sweep`
    # selects a method's hyperparameter on, so that no setting is chosen on the test set.
    val: str | None = None
    prompt: str | None = None
    image_root: str | None = None
    # Folder the evaluation file's image paths are relative to, when it differs from the training file's
    # (the reference's COCO-style caption files name bare file names under a per-dataset image folder).
    eval_image_root: str | None = None
    max_new_tokens: int | None = Field(default=None, gt=0)
    min_new_tokens: int | None = Field(default=None, ge=0)
    epochs: float | None = Field(default=None, gt=0)
    batch_size: int | None = Field(default=None, gt=0)
    # train-task batch-vote: samples per vote, the reference's per-device batch (train-task vote_size)
    vote_size: int | None = Field(default=None, gt=0)
    # eval batch-vote: the generation batch each vote is taken over, the reference's (eval batch_size)
    eval_batch_size: int | None = Field(default=None, gt=0)
    repeat: int = Field(default=1, ge=1)
    # Leave out the entries without an image, in training and evaluation (CoIN's ScienceQA keeps the dataset's
    # text-only problems; dmole trains and evaluates on image samples). False: such an entry is an error.
    skip_text_only: bool = False
    description: str = ""

    @field_validator("name")
    @classmethod
    def _valid_name(cls, name: str) -> str:
        if not NAME_PATTERN.match(name):
            raise ValueError(f"task name {name!r} must be letters, digits, '.', '_' or '-'")
        return name

    @model_validator(mode="after")
    def _pair_form_is_vqa(self) -> TaskSpec:
        if self.eval_annotations is not None and self.family not in PAIR_FAMILIES:
            raise ValueError(
                f"eval_annotations (the pair form) is for the {', '.join(PAIR_FAMILIES)} families, not {self.family!r}"
            )
        return self

    @property
    def eval_prompt(self) -> str:
        return self.prompt or DEFAULT_PROMPTS[self.family]

    @property
    def generation_limits(self) -> tuple[int, int]:
        return (
            self.max_new_tokens or DEFAULT_MAX_NEW_TOKENS[self.family],
            self.min_new_tokens if self.min_new_tokens is not None else DEFAULT_MIN_NEW_TOKENS.get(self.family, 0),
        )


class WorkspaceConfig(Strict):
    """``workspace.json``: the model, the data root, the ordered task registry and stage defaults."""

    model: str
    data: str
    tasks: list[TaskSpec] = Field(min_length=1)
    method: str = "dmole"
    seed: Seed = 42
    trust_remote_code: bool = False
    profile: Profile = "dmole"
    max_tiles: int | None = Field(default=None, ge=1)  # cap on the image processor's tiles (None: its own)
    image_aspect_ratio: ImageAspectRatio = "processor"
    stages: dict[str, dict] = Field(default_factory=dict)  # stage -> option defaults (options.py)
    methods: dict[str, dict] = Field(default_factory=dict)  # method -> hyperparameters (`dmole methods`)

    @model_validator(mode="after")
    def _unique_tasks(self) -> WorkspaceConfig:
        names = [task.name for task in self.tasks]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"task names repeat: {', '.join(duplicates)}")
        return self

    @property
    def task_names(self) -> list[str]:
        return [task.name for task in self.tasks]

    def task(self, name: str) -> TaskSpec:
        for task in self.tasks:
            if task.name == name:
                return task
        raise ConfigError(f"unknown task {name!r}; the workspace's tasks are: {', '.join(self.task_names)}")

    def task_index(self, name: str) -> int:
        """1-based position of a task in the sequence (its expert id)."""
        return self.task_names.index(self.task(name).name) + 1


def first_problem(error: ValidationError) -> str:
    """pydantic's report as one line: where the first problem is, what it is, and how many more there are."""
    first = error.errors()[0]
    location = ".".join(str(part) for part in first["loc"])
    message = first["msg"].removeprefix("Value error, ")  # our validators' own messages need no prefix
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"{location}: {message}{more}" if location else f"{message}{more}"


def parse_model(model: type[BaseModel], data: object, *, source: str) -> BaseModel:
    """Validate ``data`` against ``model`` and turn pydantic's report into one readable line."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise ConfigError(f"{source}: {first_problem(error)}") from None


def require_folder(path: Path, what: str) -> None:
    """A one-line error unless ``path`` is a folder: it does not exist, or it is a file."""
    if not path.is_dir():
        raise ConfigError(f"{what} {path} " + ("is a file, not a folder" if path.exists() else "does not exist"))


def check_creatable(path: Path, what: str) -> None:
    """A one-line error if the folder ``path`` cannot be created because it, or a folder above it, is a file."""
    blocker = next((p for p in (path.absolute(), *path.absolute().parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise ConfigError(f"{what} {path} cannot be created: {blocker} is a file, not a folder")


def resolve_path(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path)
