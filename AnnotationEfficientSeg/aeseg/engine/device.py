"""Device choice at run time and seeding. No code path needs CUDA."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from ..errors import ConfigError


def cuda_devices() -> list[str]:
    return [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def pick_device(requested: str = "auto", local_rank: int | None = None) -> torch.device:
    """``auto`` → the (local-rank) CUDA device when present, else CPU; ``cpu``; ``cuda[:i]``."""
    req = (requested or "auto").lower()
    if req == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank or 0)
        return torch.device("cpu")
    if req == "cpu":
        return torch.device("cpu")
    if req.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device '{requested}' requested but no CUDA GPU is available; use --device cpu or auto")
        dev = torch.device(req)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device '{requested}' does not exist ({torch.cuda.device_count()} GPU(s))")
        return dev
    raise ConfigError(f"unknown device '{requested}'; use auto, cpu or cuda[:N]")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


def devices_info() -> dict:
    cuda = cuda_devices()
    return {"cuda": bool(cuda), "devices": ["cpu", *cuda], "default": cuda[0] if cuda else "cpu"}
