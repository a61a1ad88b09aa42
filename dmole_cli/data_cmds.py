"""Data commands: `import` (a local Hugging Face dataset as a task of a data root)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, get_args

import typer

from dmole.stages.config import Family

from .common import QuietOption, console, handles_user_errors

FAMILIES = ", ".join(get_args(Family))


@handles_user_errors
def import_(
    source: Annotated[
        Path,
        typer.Argument(
            help="A local Hugging Face dataset: a save_to_disk folder (a DatasetDict) or a folder of parquet shards "
            "with an image column, as hub datasets are stored (data/train-00000-of-00001.parquet, ...).",
            metavar="SOURCE",
            show_default=False,
        ),
    ],
    data: Annotated[
        Path,
        typer.Option(
            help="Data root to import into: the task becomes DATA/TASK (images, "
            "training chat, evaluation file) and an entry of DATA/tasks.json."
        ),
    ],
    task: Annotated[str, typer.Option("--task", "-t", help="Name of the new task (letters, digits, '.', '_', '-').")],
    family: Annotated[str, typer.Option(help=f"Metric family, which fixes the evaluation format: {FAMILIES}.")],
    map_: Annotated[
        list[str] | None,
        typer.Option(
            "--map",
            metavar="FIELD=COLUMN",
            help="The dataset column of a record field, repeatable (e.g. --map question=query). Fields: image, id and "
            "per family caption: captions; vqa10: question, answers (10); short: question, answer; choice: "
            "question, choices, answer (index, letter or option text); grounding: sent, bbox (pixels), "
            "knowledge. Default: the field's own name (captions also 'caption', choices 'options', id "
            "'question_id' or 'id').",
        ),
    ] = None,
    train_split: Annotated[
        str,
        typer.Option(
            help="Split that becomes the training chat (a 'conversations' column, LLaVA-style, is taken as it is)."
        ),
    ] = "train",
    eval_split: Annotated[
        str | None, typer.Option(help="Split that becomes the evaluation file [default: test, validation or val].")
    ] = None,
    prompt: Annotated[
        str | None,
        typer.Option(
            help="The task's prompt template ({question}, {choices}, {sent}, {knowledge}); also the question of "
            "the training chat [default: the family's]."
        ),
    ] = None,
    bbox: Annotated[
        str,
        typer.Option(
            help="Grounding boxes in the dataset: xyxy (x1,y1,x2,y2) or xywh (x,y,width,height, COCO), in pixels."
        ),
    ] = "xyxy",
    overwrite: Annotated[
        bool, typer.Option(help="Replace a task of the same name (its folder and its registry entry).")
    ] = False,
    quiet: QuietOption = False,
) -> None:
    """Import a local Hugging Face dataset as a dmole task: images under DATA/TASK/images, the evaluation split in
    the family's format, the training split as the training chat (the task's prompt, then the answer), and the task
    in DATA/tasks.json, ready for [bold]dmole init --data DATA[/].

    Each row is validated as a JSONL line is (errors name its split, row and field); a failed import writes nothing."""
    from dmole.stages.data.row_mapping import parse_mapping
    from dmole.stages.import_data import import_dataset

    from .progress import rich_progress

    result = import_dataset(
        source,
        data,
        task,
        family,
        train_split=train_split,
        eval_split=eval_split,
        mapping=parse_mapping(map_ or []),
        prompt=prompt,
        box_format=bbox,
        overwrite=overwrite,
        progress=rich_progress(quiet),
    )
    console.print(result.summary(), soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("import")(import_)
