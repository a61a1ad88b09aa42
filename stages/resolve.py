"""A stage's options resolved against the registries, and the workspace's sections checked against them.

Precedence for a stage option: the model default < the workspace profile < the workspace's ``stages`` section <
what the caller set (a command-line flag, or a field set explicitly on the options object). The method an options
model or the workspace names, the workspace's ``stages`` section and its ``methods`` section are checked here,
above both the stage registry (`registry.py`) and the method registry (`methods/`), which `config.py` knows
neither of.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from .config import ConfigError, WorkspaceConfig, first_problem
from .methods import get_method, method_names
from .options import explicit
from .profile import reference_settings
from .registry import with_options

# `profile: reference` switches each deliberate difference from the official implementation back to it where it
# is an option (stages/profile.py declares them all); workspace stage settings and command-line flags still win.
REFERENCE_PROFILE: dict[str, dict] = reference_settings()
T = TypeVar("T")


def check_method(name: str | None) -> str | None:
    """A registered method's name, or a one-line error naming the registered ones."""
    if name is not None and name not in method_names():
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(method_names())}")
    return name


def stage_profile(config: WorkspaceConfig, stage: str) -> dict:
    """The profile's defaults for ``stage`` (below the workspace's own ``stages`` section)."""
    return REFERENCE_PROFILE.get(stage, {}) if config.profile == "reference" else {}


def _problem(where: str, check: Callable[[], T]) -> T:
    """What ``check`` returns, or its error as one line after ``where``."""
    try:
        return check()
    except ValidationError as error:
        raise ConfigError(f"{where}: {first_problem(error)}") from None
    except ValueError as error:
        raise ConfigError(f"{where}: {error}") from None


def _options(model: type[BaseModel], values: Mapping) -> BaseModel:
    """``values`` as ``model``'s options, the method they name checked against the method registry."""
    options = model.model_validate(values)
    try:
        check_method(getattr(options, "method", None))
    except ValueError as error:
        raise ValueError(f"method: {error}") from None
    return options


def stage_options(config: WorkspaceConfig, stage: str, given: BaseModel | Mapping | None = None) -> BaseModel:
    """``stage``'s options: the profile's and the workspace's defaults, then what the caller set."""
    model = with_options()[stage].options
    if isinstance(given, BaseModel) and not isinstance(given, model):
        raise TypeError(f"{stage} takes {model.__name__}, not {type(given).__name__}")
    merged = {**stage_profile(config, stage), **config.stages.get(stage, {}), **explicit(given)}
    return _problem(f"options of '{stage}'", lambda: _options(model, merged))


def _hyper(method: str, values: Mapping) -> BaseModel:
    return get_method(method).Hyper.model_validate(values)


def check_workspace(config: WorkspaceConfig, *, source: str) -> WorkspaceConfig:
    """``config`` once its ``method``, ``stages`` and ``methods`` sections name known methods, stages and keys; else
    a one-line error naming the first problem, as ``source: section: problem``."""
    _problem(f"{source}: method", lambda: check_method(config.method))
    stages = with_options()
    for name, values in config.stages.items():
        if name not in stages:
            raise ConfigError(f"{source}: stages: unknown stage {name!r}; stages with options: {', '.join(stages)}")
        _problem(f"{source}: stages: stage {name!r}", partial(_options, stages[name].options, values))
    for name, values in config.methods.items():
        _problem(f"{source}: methods", partial(check_method, name))
        _problem(f"{source}: methods: method {name!r}", partial(_hyper, name, values))
    return config
