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


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 convolutions natively: a CUDA GPU that supports
    it, or a CPU with AMX tiles or AVX512-BF16 (oneDNN would emulate bfloat16 on other CPUs,
    which is slower than float32)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # torch.cpu, private but stable since 2.1
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


def devices_info() -> dict:
    cuda = cuda_devices()
    return {"cuda": bool(cuda), "devices": ["cpu", *cuda], "default": cuda[0] if cuda else "cpu"}
