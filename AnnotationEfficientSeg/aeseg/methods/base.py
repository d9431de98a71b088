"""The method contract.

A method is a class with a typed config dataclass. The engine owns the loop, the
device, seeding, checkpoints, progress events and cancellation; the method owns its
networks and optimisers and one training step (which may take several optimiser steps:
GANs, two co-trained networks, a meta step), plus hooks between epochs and phases
(label correction, sample selection) and ``predict_proba``. What a method reports goes
back as typed objects (:class:`EpochReport`, :class:`QualityResult`), not attributes.
"""

from __future__ import annotations

import contextlib
import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..cohort.summary import CohortSummary  # noqa: F401  (re-exported for methods)

if TYPE_CHECKING:  # pragma: no cover
    from ..data.dataset import CohortData
    from ..engine.job import JobFolder


@dataclass
class Phase:
    """A stage of training with its own number of epochs (e.g. GAN, then iterative training)."""

    name: str
    epochs: int


@dataclass
class StepInfo:
    phase: str
    epoch: int  # 0-based within the phase
    epochs: int
    step: int  # 0-based within the epoch
    steps: int
    global_step: int


@dataclass
class EpochReport:
    """What a method reports after an epoch: metrics for the log and events for the UI."""

    metrics: dict[str, float] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class CaseQuality:
    """One row of quality.csv before ranking. ``score``: higher = more trustworthy label."""

    case: str
    score: float
    columns: dict[str, Any] = field(default_factory=dict)
    flag: bool | None = None  # None: let the engine flag the lowest scores


@dataclass
class QualityResult:
    rows: list[CaseQuality]
    maps: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # case → name → (Z,Y,X) float map


@dataclass
class MethodContext:
    """What the engine hands a method."""

    device: torch.device
    data: "CohortData"
    seed: int
    amp: bool = False
    world_size: int = 1
    rank: int = 0
    cohort: Any = None  # the aeseg.cohort.manifest.Cohort being trained on (None when only predicting)
    _scaler: Any = None

    @property
    def in_channels(self) -> int:
        return self.data.in_channels

    def wrap(self, module: nn.Module) -> nn.Module:
        """Move ``module`` to the device; under ``torchrun`` wrap it in DistributedDataParallel."""
        module = module.to(self.device)
        if self.world_size > 1 and any(p.requires_grad for p in module.parameters()):
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            return DDP(module, device_ids=ids)
        return module

    def autocast(self):
        """Mixed precision on CUDA when enabled; a no-op elsewhere."""
        if self.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    @property
    def scaler(self):
        if self._scaler is None:
            self._scaler = torch.amp.GradScaler("cuda", enabled=self.amp and self.device.type == "cuda")
        return self._scaler

    def optimize(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, clip: float | None = None,
                 params: list[torch.Tensor] | None = None) -> None:
        """Backward, optional gradient clipping, optimiser step (AMP-scaled on CUDA)."""
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if clip:
            self.scaler.unscale_(optimizer)
            ps = params if params is not None else [p for g in optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(ps, clip)
        self.scaler.step(optimizer)
        self.scaler.update()

    def generator(self, offset: int = 0) -> torch.Generator:
        """A CPU generator seeded from the job seed (for reproducible method randomness)."""
        g = torch.Generator()
        g.manual_seed(self.seed * 1000003 + offset)
        return g


class Method(ABC):
    """Base class of every method. Subclasses set ``name``, ``title``, ``description``,
    ``needs`` and ``Config`` and implement the abstract methods."""

    name: ClassVar[str]
    title: ClassVar[str]
    description: ClassVar[str]
    needs: ClassVar[str]
    Config: ClassVar[type]
    #: label kinds whose slices the default sampler draws from
    train_kinds: ClassVar[tuple[str, ...] | None] = ("clean", "noisy")

    def __init__(self, config: Any, ctx: MethodContext):
        self.config = config
        self.ctx = ctx
        #: the method's own random stream (augmentations, sampling); checkpointed by default
        self.g = ctx.generator(zlib.crc32(self.name.encode()) % 10_007)

    # --- what the cohort must offer -------------------------------------------------
    @classmethod
    @abstractmethod
    def unsupported_reason(cls, summary: CohortSummary, config: Any | None = None) -> str | None:
        """``None`` when the method can run on a cohort like ``summary``, else why not."""

    # --- state the engine checkpoints -----------------------------------------------
    @abstractmethod
    def modules(self) -> dict[str, nn.Module]:
        """Every network whose weights are saved (names are stable across versions)."""

    @abstractmethod
    def optimizers(self) -> dict[str, Any]:
        """Every optimiser and LR scheduler whose state is saved."""

    def extra_state(self) -> dict[str, Any]:
        """Other state to checkpoint (tensors and plain Python values only); by default the
        state of ``self.g``. Overrides should extend ``super().extra_state()``."""
        return {"rng": self.g.get_state()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "rng" in state:
            self.g.set_state(state["rng"])

    # --- training --------------------------------------------------------------------
    def phases(self, epochs: int) -> list[Phase]:
        return [Phase("train", epochs)]

    def begin_phase(self, phase: Phase) -> None:
        pass

    def train_indices(self, phase: Phase) -> torch.Tensor:
        """Slice indices of ``data.train`` the engine samples batches from in ``phase``."""
        return self.ctx.data.train.indices(self.train_kinds)

    def make_batch(self, idx: torch.Tensor, phase: Phase) -> dict:
        """The batch for the sampled indices (override to add paired or auxiliary data)."""
        return self.ctx.data.train.batch(idx)

    @abstractmethod
    def train_step(self, batch: dict, info: StepInfo) -> dict[str, float]:
        """One training iteration on ``batch`` (already on the device); returns scalar losses."""

    def end_epoch(self, info: StepInfo) -> EpochReport:
        """Called after every epoch (label correction, schedulers, sample selection)."""
        return EpochReport()

    # --- inference -----------------------------------------------------------------
    @abstractmethod
    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(B, 2, H, W)`` for images ``(B, C, H, W)`` (eval mode, no grad)."""

    def quality(self, predictions: dict[str, np.ndarray], job: "JobFolder") -> QualityResult | None:
        """Per-case label-quality scores; ``None`` → the engine's default (agreement of the
        given label with the model's prediction)."""
        return None

    def write_outputs(self, job: "JobFolder", predictions: dict[str, np.ndarray]) -> list[Path]:
        """Method-specific files (corrections, per-round pseudo labels); returns their paths."""
        return []

    def report_figures(self, job: "JobFolder", ranked: list[dict]) -> list:
        """The method's own figures for the report (:class:`~aeseg.report.ReportFigure`),
        drawn into ``job.report_dir``; ``ranked``: the quality rows in review order."""
        return []

    def train_mode(self, training: bool) -> None:
        for m in self.modules().values():
            m.train(training)
