"""Command-line flags generated from a stage's options model (`stages/options.py`), the one place each option's
name, type, default and help are written.

``@stage_flags(TRAIN_TASK)`` on a command adds one ``--flag`` per field of the declared stage's model
(`stages/registry.py`) to the command's own parameters, and hands the command the values the user gave as
``options`` (a dict; flags left out are not in it, so the workspace's defaults apply below them when the stage
resolves its options).
"""

from __future__ import annotations

import enum
import functools
import inspect
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import typer
from pydantic.fields import FieldInfo

from dmole.stages.errors import UserError
from dmole.stages.options import parse_pairs
from dmole.stages.registry import Stage

OPTIONS = "options"
COMMON = ("force", "quiet", "json_output", "workspace")


def _plain(annotation: Any) -> Any:
    """The annotation without Optional / ``| None``."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def _default_text(field: FieldInfo) -> str:
    if field.default_factory is not None:
        return ""
    value = field.default
    if value is None:
        return ""
    if isinstance(value, bool):
        return f" \\[default: {'on' if value else 'off'}]"  # escaped: rich would read [..] as markup
    return f" \\[default: {value}]"


def _flag(name: str, field: FieldInfo, flags: dict[str, str]) -> tuple[Any, Callable[[Any], Any]]:
    """The Annotated type of the flag for one field, and how to turn its value into the option's."""
    kind = _plain(field.annotation)
    help_text = (field.description or "").rstrip(".")
    help_text = help_text[:1].upper() + help_text[1:] + "." + _default_text(field)
    flag = _flag_name(name, flags)
    if kind is bool:
        declared = f"{flag}/--no-{flag.removeprefix('--')}"
        return Annotated[bool | None, typer.Option(declared, help=help_text)], lambda v: v
    if get_origin(kind) is Literal:  # typer offers choices through an Enum
        values = choices(name, tuple(str(c) for c in get_args(kind)))
        return Annotated[values | None, typer.Option(flag, help=help_text)], lambda v: None if v is None else v.value
    if get_origin(kind) is dict:
        singular = flags.get(name, "--" + name.removesuffix("s").replace("_", "-"))
        return (
            Annotated[list[str] | None, typer.Option(singular, metavar="KEY=VALUE", help=help_text)],
            lambda v: parse_pairs(v) if v else None,
        )
    if get_origin(kind) is list:
        return Annotated[list[get_args(kind)[0]] | None, typer.Option(flag, help=help_text)], lambda v: v or None
    return Annotated[kind | None, typer.Option(flag, help=help_text)], lambda v: v


def choices(name: str, values: tuple[str, ...]) -> type[enum.Enum]:
    """An Enum of ``values``, which typer offers as a flag's choices (and `--help` lists)."""
    return enum.Enum(f"{name}_choices", {value: value for value in values}, type=str)


def _flag_name(name: str, flags: dict[str, str]) -> str:
    return flags.get(name, "--" + name.replace("_", "-"))


def options_of(stage: Stage, options: dict) -> dict:
    """``options`` when ``stage`` takes each of them (a command whose flags serve several stages runs one), else a
    one-line error naming the first it does not take."""
    foreign = [name for name in options if name not in stage.options.model_fields]
    if foreign:
        raise UserError(f"{_flag_name(foreign[0], stage.flags)} is not an option of {' '.join(stage.command_line)}")
    return options


def stage_flags(*stages: Stage) -> Callable:
    """Give a command one flag per option of ``stages`` (an option several share is one flag, with the first
    stage's help; each stage's declaration renames some); the command receives what the user set as ``options``."""
    fields: dict[str, FieldInfo] = {}
    for stage in stages:
        for name, field in stage.options.model_fields.items():
            fields.setdefault(name, field)
    flags = {name: flag for stage in stages for name, flag in stage.flags.items()}

    def decorate(command: Callable) -> Callable:
        own = inspect.signature(command)
        hints = typing.get_type_hints(command, include_extras=True)
        params, annotations, converters = [], {}, {}
        for name, param in own.parameters.items():
            if name != OPTIONS:
                params.append(param.replace(annotation=hints[name]))
                annotations[name] = hints[name]
        # the stage's flags go after the command's own and before the ones every command shares
        first_keyword = next((i for i, p in enumerate(params) if p.name in COMMON), len(params))
        generated = []
        for name, field in fields.items():
            annotation, converters[name] = _flag(name, field, flags)
            generated.append(
                inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)
            )
            annotations[name] = annotation
        ordered = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params]
        ordered = ordered[:first_keyword] + generated + ordered[first_keyword:]

        @functools.wraps(command)
        def wrapper(*args, **kwargs):
            given = {name: converters[name](kwargs.pop(name)) for name in converters if name in kwargs}
            return command(*args, **kwargs, options={k: v for k, v in given.items() if v is not None})

        wrapper.__signature__ = inspect.Signature(ordered)
        wrapper.__annotations__ = annotations
        return wrapper

    return decorate
