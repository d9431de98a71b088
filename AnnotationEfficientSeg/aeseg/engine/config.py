"""Typed configs of a job: the engine's, the data's (``data.transforms.DataConfig``) and
the method's own dataclass; resolution of ``--set key=value`` and config files."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..data.transforms import DataConfig
from ..errors import ConfigError
from ..methods.registry import build_config, coerce, get_method


@dataclass
class EngineConfig:
    epochs: int = field(default=30, metadata={"help": "training epochs (per phase)", "min": 1})
    batch_size: int = field(default=16, metadata={"help": "slices per batch", "min": 1})
    steps_per_epoch: int = field(default=0, metadata={"help": "optimiser steps per epoch (0: one pass over the training slices)", "min": 0})
    val_every: int = field(default=1, metadata={"help": "validate every N epochs", "min": 1})
    amp: bool = field(default=True, metadata={"help": "mixed precision (GPU only)"})
    final: Literal["best", "last"] = field(default="best", metadata={"help": "weights used for outputs: best validation Dice or last epoch"})
    flag_fraction: float = field(default=0.25, metadata={"help": "fraction of cases flagged for review", "min": 0.0, "max": 1.0})
    progress_interval: float = field(default=0.5, metadata={"help": "seconds between progress events", "min": 0.0})
    threads: int = field(default=0, metadata={"help": "CPU threads (0: PyTorch default)", "min": 0})
    probability_maps: bool = field(default=True, metadata={"help": "write maps/<case>/probability.nrrd"})


SECTIONS = ("method", "engine", "data")


@dataclass
class JobConfig:
    method: str
    method_config: Any
    engine: EngineConfig
    data: DataConfig
    seed: int = 0
    device: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        return {"method": dataclasses.asdict(self.method_config), "engine": dataclasses.asdict(self.engine),
                "data": dataclasses.asdict(self.data)}


def _section_classes(method: str) -> dict[str, type]:
    return {"method": get_method(method).Config, "engine": EngineConfig, "data": DataConfig}


def resolve_config(method: str, values: dict[str, Any] | None = None, seed: int = 0, device: str = "auto") -> JobConfig:
    """Build a :class:`JobConfig` from nested (``{"engine": {...}}``) or flat values.

    Flat keys may be qualified (``engine.epochs``) or bare (``epochs``); a bare key is
    looked up in the method's config, then the engine's, then the data's.
    """
    classes = _section_classes(method)
    sections: dict[str, dict[str, Any]] = {k: {} for k in SECTIONS}
    for key, value in (values or {}).items():
        if key in SECTIONS and isinstance(value, dict):
            for k, v in value.items():
                _put(classes, sections, f"{key}.{k}", v)
        else:
            _put(classes, sections, key, value)
    return JobConfig(method, build_config(classes["method"], sections["method"]),
                     build_config(EngineConfig, sections["engine"]), build_config(DataConfig, sections["data"]),
                     seed=seed, device=device)


def _put(classes: dict[str, type], sections: dict[str, dict], key: str, value: Any) -> None:
    if "." in key:
        sec, name = key.split(".", 1)
        if sec not in classes:
            raise ConfigError(f"unknown config section '{sec}' in '{key}'; use method., engine. or data.")
        coerce(classes[sec], name, value)  # validates the name and value now
        sections[sec][name] = value
        return
    for sec in SECTIONS:
        names = {f.name for f in dataclasses.fields(classes[sec])}
        if key in names:
            sections[sec][key] = value
            return
    known = sorted({f.name for c in classes.values() for f in dataclasses.fields(c)})
    raise ConfigError(f"unknown option '{key}'; known: {', '.join(known)}")


def parse_sets(items: list[str]) -> dict[str, str]:
    out = {}
    for it in items or []:
        if "=" not in it:
            raise ConfigError(f"--set expects key=value, got '{it}'")
        k, v = it.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{p}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: must hold a JSON object")
    return data
