"""The method registry: name → class. A method module registers itself with
:func:`register`; :func:`get_method` imports the built-in method modules lazily."""

from __future__ import annotations

import dataclasses
import importlib
import typing
from typing import Any, Literal, get_args, get_origin

from ..errors import ConfigError
from .base import Method

_REGISTRY: dict[str, type[Method]] = {}
BUILTIN_MODULES = ("supervised", "mean_teacher", "aide", "meta_reweight", "shape_prior_gan", "presence_absence")


def register(cls: type[Method]) -> type[Method]:
    _REGISTRY[cls.name] = cls
    return cls


def _load_builtins() -> None:
    for mod in BUILTIN_MODULES:
        try:
            importlib.import_module(f"{__package__}.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"{__package__}.{mod}":
                raise


def all_methods() -> dict[str, type[Method]]:
    _load_builtins()
    return dict(sorted(_REGISTRY.items()))


def get_method(name: str) -> type[Method]:
    methods = all_methods()
    if name not in methods:
        raise ConfigError(f"unknown method '{name}'; available: {', '.join(methods)}")
    return methods[name]


def config_schema(config_cls: type) -> list[dict[str, Any]]:
    """The fields of a config dataclass as a JSON-able form description (name, type,
    default, help, choices, min, max), for the Slicer panel and ``aeseg methods --json``."""
    hints = typing.get_type_hints(config_cls)
    out = []
    for f in dataclasses.fields(config_cls):
        if f.metadata.get("hidden"):
            continue
        t = hints[f.name]
        entry: dict[str, Any] = {"name": f.name, "help": f.metadata.get("help", ""),
                                 "min": f.metadata.get("min"), "max": f.metadata.get("max")}
        if get_origin(t) is Literal:
            entry["type"] = "choice"
            entry["choices"] = list(get_args(t))
        elif t is bool:
            entry["type"] = "bool"
        elif t is int:
            entry["type"] = "int"
        elif t is float:
            entry["type"] = "float"
        else:
            entry["type"] = "str"
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        entry["default"] = default
        out.append(entry)
    return out


def coerce(config_cls: type, name: str, value: Any) -> Any:
    """Turn a command-line string (or JSON value) into the field's type, with range checks."""
    hints = typing.get_type_hints(config_cls)
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    if name not in fields:
        raise ConfigError(f"{config_cls.__name__} has no field '{name}'")
    t, f = hints[name], fields[name]
    try:
        if get_origin(t) is Literal:
            choices = get_args(t)
            if value not in choices:
                raise ConfigError(f"{name} must be one of {', '.join(map(str, choices))}, not '{value}'")
            v = value
        elif t is bool:
            if isinstance(value, bool):
                v = value
            elif str(value).lower() in ("1", "true", "yes", "on"):
                v = True
            elif str(value).lower() in ("0", "false", "no", "off"):
                v = False
            else:
                raise ConfigError(f"{name} must be true or false, not '{value}'")
        elif t is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            v = int(value)
        elif t is float:
            v = float(value)
        else:
            v = str(value)
    except ValueError:
        raise ConfigError(f"{name} must be a {getattr(t, '__name__', t)}, not '{value}'") from None
    lo, hi = f.metadata.get("min"), f.metadata.get("max")
    if lo is not None and v < lo or hi is not None and v > hi:
        raise ConfigError(f"{name}={v} is out of range [{lo}, {hi}]")
    return v


def build_config(config_cls: type, values: dict[str, Any]) -> Any:
    """A config instance from ``values`` (unknown keys are an error, values coerced)."""
    kwargs = {k: coerce(config_cls, k, v) for k, v in values.items()}
    return config_cls(**kwargs)
