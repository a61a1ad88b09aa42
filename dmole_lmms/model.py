"""The ``dmole`` model of lmms-eval: each request's image and prompt go to the dmole model of a workspace
(stages/harness.py), which routes every sample from its own inputs. lmms-eval's task name only locates a
request's document; it never reaches the model.

``--model_args``: ``workspace`` (required), ``after`` (a task, or ``zero-shot``), ``method`` (default: the
workspace's), ``roe=true`` (the RoE model instead), and any option of ``dmole eval`` (``routing``, ``top``,
``threshold_scale``, ...; with ``roe``, ``batch_rule``). lmms-eval's ``--batch_size`` (``auto``: the eval stage's)
and ``--device`` apply. An error in them is one line listing the valid model_args.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from loguru import logger
from PIL import Image

from dmole.artifacts import ArtifactError
from dmole.stages.data.samples import IMAGE_PLACEHOLDER
from dmole.stages.errors import UserError
from dmole.stages.harness import open_model
from dmole.stages.project import Project
from dmole.stages.registry import EVAL, ROE_EVAL
from dmole.stages.resolve import stage_options

DEFAULT_MAX_NEW_TOKENS = 128  # when a task's generation_kwargs set none
MODEL_ARGS = ("workspace", "after", "method", "roe")  # the model_args of the plugin itself; the rest are options


def valid_model_args(roe: bool) -> str:
    """The model_args the plugin takes: its own, then the options of `dmole eval` (with roe=true, of roe-eval)."""
    options = (ROE_EVAL if roe else EVAL).options.model_fields
    return ", ".join([*MODEL_ARGS, *(name for name in options if name not in MODEL_ARGS)])


class DMoLEModel(lmms):
    is_simple = True

    def __init__(
        self,
        workspace: str | None = None,
        after: str | None = None,
        method: str | None = None,
        roe: bool | str = False,
        batch_size: int | str = 1,
        device: str | None = None,
        max_batch_size: int | None = None,  # noqa: ARG002
        **options,
    ) -> None:
        """``batch_size`` is lmms-eval's ``--batch_size``: a number, or ``auto`` for the eval stage's batch size
        (the workspace's); ``max_batch_size`` (lmms-eval's cap on an automatic batch size) is accepted and not
        used. Any error in the model_args is one UserError naming the valid ones."""
        super().__init__()
        roe = roe is True or str(roe).lower() == "true"
        try:
            self.harness, self.batch_size = _open(workspace, after, method, roe, batch_size, device, options)
        except (UserError, ArtifactError) as error:
            raise UserError(f"dmole model: {error} (--model_args takes {valid_model_args(roe)})") from None
        logger.info(f"dmole: {self.harness.name} from {workspace}, batches of {self.batch_size}")
        self._warned_sampling = False

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Greedy replies in request order, in batches of ``batch_size`` requests that share generation limits."""
        replies: list[str | None] = [None] * len(requests)
        pending: list[tuple[int, Image.Image, str]] = []
        limits = None
        for index, request in enumerate(requests):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            request_limits = self._limits(gen_kwargs)
            if pending and (request_limits != limits or len(pending) == self.batch_size):
                self._generate(pending, limits, replies)
                pending = []
            limits = request_limits
            document = self.task_dict[task][split][doc_id]
            pending.append((index, _one_image(doc_to_visual(document), task, doc_id), _prompt(context)))
        if pending:
            self._generate(pending, limits, replies)
        return replies

    def _generate(self, pending: list, limits: tuple, replies: list) -> None:
        max_new, min_new, until = limits
        texts = self.harness.generate(
            [image for _, image, _ in pending],
            [prompt for _, _, prompt in pending],
            max_new_tokens=max_new,
            min_new_tokens=min_new,
        )
        for (index, _, _), text in zip(pending, texts):
            replies[index] = _cut(text, until)

    def _limits(self, gen_kwargs: dict) -> tuple[int, int, tuple[str, ...]]:
        """(max new tokens, min new tokens, stop strings); sampling settings are noted once and not applied."""
        sampling = {
            k: gen_kwargs[k]
            for k in ("do_sample", "temperature", "num_beams", "top_p")
            if k in gen_kwargs and gen_kwargs[k] not in (False, 0, 1, None)
        }
        if sampling and not self._warned_sampling:
            warnings.warn(
                f"dmole decodes greedily with one beam, as `dmole eval` does; ignoring {sampling}", stacklevel=2
            )
            self._warned_sampling = True
        until = gen_kwargs.get("until") or ()
        return (
            int(gen_kwargs.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS),
            int(gen_kwargs.get("min_new_tokens") or 0),
            (until,) if isinstance(until, str) else tuple(until),
        )

    def loglikelihood(self, requests: list[Instance]) -> list:
        raise NotImplementedError(
            "dmole evaluates by generation (generate_until tasks); loglikelihood tasks are not supported"
        )

    def generate_until_multi_round(self, requests: list[Instance]) -> list:
        raise NotImplementedError("dmole answers one turn per sample; multi-round tasks are not supported")


def _open(workspace: str | None, after, method, roe: bool, batch_size: int | str, device, options: dict):
    """The harness model of the model_args and the batch size it generates in."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("the dmole lmms-eval model runs in one process; start lmms-eval without a launcher")
    if workspace is None:
        raise UserError("say which workspace: workspace=PATH")
    stage = ROE_EVAL if roe else EVAL
    unknown = sorted(set(options) - set(stage.options.model_fields))
    if unknown:
        raise UserError(f"unknown model_args {', '.join(unknown)}")
    project = Project.open(Path(str(workspace)))
    if str(batch_size).lower().startswith("auto"):  # lmms-eval's usual value, also as auto:N
        batch_size = stage_options(project.config, stage.name, options).batch_size
    elif not str(batch_size).isdigit() or int(batch_size) < 1:
        raise UserError(f"batch_size must be a positive number or auto, got {batch_size!r}")
    harness = open_model(
        project,
        None if after is None else str(after),
        method=method,
        roe=roe,
        options={**options, "batch_size": int(batch_size)},
        device=device,
    )
    return harness, int(batch_size)


def _one_image(visuals: list, task: str, doc_id: int) -> Image.Image:
    """dmole's models take exactly one image per sample."""
    images = [v for v in visuals or [] if isinstance(v, Image.Image)]
    if len(images) != 1 or len(visuals) != 1:
        raise UserError(
            f"lmms-eval task {task!r}, document {doc_id}: dmole takes one image per sample, got "
            f"{len(visuals or [])} visual input(s)"
        )
    return images[0].convert("RGB")


def _prompt(context: str) -> str:
    """The user text: an image placeholder in the task's prompt is dropped (the chat template places the image)."""
    return context.replace(IMAGE_PLACEHOLDER, "").strip()


def _cut(text: str, until: tuple[str, ...]) -> str:
    """The reply up to the first stop string, as lmms-eval's models cut theirs."""
    for stop in until:
        if stop:
            text = text.split(stop, maxsplit=1)[0]
    return text
