"""Defaults of the Dagster ``Config`` classes, read from the domain dataclasses and functions they feed.

Each recipe, limit and threshold is written once, in ``trading_core``; a ``Config`` field says where its default
lives (``min_sharpe: float = default_of(PromotionThresholds, "min_sharpe")``) instead of repeating the value, and
its ``to_domain()`` builds the domain object from the run's values.
"""

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any, Self

import dagster as dg
from pydantic import model_validator


def default_of(source: type | Callable[..., Any], name: str) -> Any:
    """The default of field ``name`` of a dataclass, or of parameter ``name`` of a function.

    A field with a ``default_factory`` gives a fresh value from it. Dagster ``Config`` fields need plain values
    (numbers, strings, lists, ``None``), so read scalar fields, not nested dataclasses, for them.

    :param source: a dataclass type, or a function (or class) whose signature holds the default
    :param name: the field or parameter
    :raises KeyError: when ``source`` has no such field or parameter
    :raises ValueError: when it has one without a default
    """
    if dataclasses.is_dataclass(source):
        for field in dataclasses.fields(source):
            if field.name == name:
                if field.default is not dataclasses.MISSING:
                    return field.default
                if field.default_factory is not dataclasses.MISSING:
                    return field.default_factory()
                raise ValueError(f"{source.__name__}.{name} has no default")
        raise KeyError(f"{source.__name__} has no field {name!r}")
    parameters = inspect.signature(source).parameters
    if name not in parameters:
        raise KeyError(f"{source.__qualname__} has no parameter {name!r}")
    default = parameters[name].default
    if default is inspect.Parameter.empty:
        raise ValueError(f"parameter {name!r} of {source.__qualname__} has no default")
    return default


def name_of(presets: Mapping[str, Any], value: Any) -> str:
    """The key under which ``presets`` holds ``value``: the name a ``Config`` uses for a domain default object.

    :raises ValueError: when no preset equals ``value``
    """
    for name, preset in presets.items():
        if preset == value:
            return name
    raise ValueError(f"{value!r} is none of the presets {', '.join(presets)}")


class DomainCheckedConfig(dg.Config):
    """A ``Config`` whose ``to_domain()`` runs when the config is built, so the domain dataclass's own checks
    (a budget that is not positive, a negative seed) refuse a bad value in the launchpad and the CLI before any
    step starts, not when its step does."""

    def to_domain(self) -> Any:
        raise NotImplementedError

    @model_validator(mode="after")
    def _checked_by_the_domain(self) -> Self:
        self.to_domain()
        return self
