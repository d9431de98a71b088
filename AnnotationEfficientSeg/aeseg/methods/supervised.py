"""``supervised``: a U-Net trained with Dice + CE on the cohort's labels.

With ``labels=clean`` (default) it learns from expert labels only (the clean-only
baseline); with ``labels=all`` it treats noisy labels as if clean (the noisy baseline).
It is also the model behind task standardization.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from ..nets import NetConfig, make_unet
from .base import CohortSummary, EpochReport, Method, StepInfo
from .common import random_flips, random_rotations, recalibrate_bn, seg_loss
from .registry import register


@dataclass
class SupervisedConfig(NetConfig):
    labels: Literal["clean", "all"] = field(default="clean", metadata={"help": "train on clean labels only, or on every label as if clean"})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate", "min": 0.0})
    weight_decay: float = field(default=1e-5, metadata={"help": "Adam weight decay", "min": 0.0})
    augment: bool = field(default=True, metadata={"help": "random flips"})
    train_rotation: float = field(default=0.0, metadata={"help": "random in-plane rotation of each training sample, U(± degrees) (0: none)", "min": 0.0, "max": 180.0})
    precise_bn: bool = field(default=False, metadata={"help": "recompute BatchNorm statistics over the training slices after every epoch, so that validation and the saved model use those of the current weights"})
    standardize: bool = field(default=False, metadata={"help": "first give unlabelled cases pseudo labels from a model trained on the clean ones (task standardization)"})


@register
class Supervised(Method):
    name = "supervised"
    title = "Supervised (baseline)"
    description = "U-Net trained with Dice + cross-entropy on the labels as given."
    needs = "clean labels (or any labels with labels=all)"
    Config = SupervisedConfig

    @classmethod
    def unsupported_reason(cls, s: CohortSummary, config: SupervisedConfig | None = None) -> str | None:
        labels = config.labels if config else "clean"
        if labels == "clean" and s.clean_train == 0:
            if s.noisy_train:
                return "no clean-labelled training case; set labels=all to train on the noisy labels"
            return "no labelled training case"
        if labels == "all" and s.clean_train + s.noisy_train == 0:
            return "no labelled training case"
        return None

    def __init__(self, config: SupervisedConfig, ctx):
        super().__init__(config, ctx)
        self.train_kinds = ("clean",) if config.labels == "clean" else ("clean", "noisy")
        self.net = ctx.wrap(make_unet(ctx.in_channels, 2, config))
        self.opt = torch.optim.Adam(self.net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.loss = seg_loss()

    def modules(self):
        return {"net": self.net}

    def optimizers(self):
        return {"opt": self.opt}

    def train_step(self, batch: dict, info: StepInfo) -> dict[str, float]:
        x, y = batch["image"], batch["label"]
        if self.config.augment:
            x, y = random_flips(x, y, self.g)
        x, (y,) = random_rotations(x, [y], self.config.train_rotation, self.g)
        self.net.train()
        with self.ctx.autocast():
            loss = self.loss(self.net(x), y)
        self.ctx.optimize(loss, self.opt)
        return {"loss": float(loss.detach())}

    def end_epoch(self, info: StepInfo) -> EpochReport:
        if self.config.precise_bn:
            train = self.ctx.data.train
            recalibrate_bn([self.net], train.images, train.indices(self.train_kinds), self.ctx.device)
        return EpochReport()

    @torch.no_grad()
    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        self.net.eval()
        return torch.softmax(self.net(images).float(), dim=1)
