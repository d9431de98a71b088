"""Output calibration to the given labels' total area (prior-shift correction).

A network trained with a Dice term on labels whose errors go both ways (some cases
eroded, some dilated) tends to over-segment: where labels disagree, soft Dice pays more
for a missed foreground pixel than for an extra one. The labels' total area, though, is
about right when their errors balance. The calibration therefore picks the foreground
threshold ``t`` at which the model's predictions of the labelled training cases mark as
many voxels as their labels, and applies it as a constant logit offset,
``p' = σ(logit p − logit t)``: the correction of a classifier's output for a change of
class prior (Saerens, Latinne & Decaestecker, Neural Computation 2002: the posterior
rescaled by the ratio of priors, which for two classes is one logit offset), so that ``p' > 0.5`` exactly where ``p > t`` and probability maps stay
probabilities. Nothing here needs torch; no library offers the threshold search, which
is one partial sort.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

#: probabilities are clipped to [EPS, 1 − EPS] before the logit
EPS = 1e-6


def area_threshold(prob: np.ndarray, area: int) -> float:
    """The foreground threshold ``t`` at which ``prob >= t`` marks ``area`` voxels: the
    ``area``-th largest probability (1.01 for ``area`` ≤ 0, so that nothing is marked;
    every voxel's probability for ``area`` ≥ its size, so that everything is)."""
    flat = np.asarray(prob, dtype=np.float64).ravel()
    if area <= 0:
        return 1.01
    if area >= flat.size:
        return float(flat.min()) if flat.size else 1.01
    return float(np.partition(flat, flat.size - area)[flat.size - area])


def logit(p: float) -> float:
    p = min(max(float(p), EPS), 1.0 - EPS)
    return math.log(p / (1.0 - p))


def label_area_offset(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float, int]:
    """``(t, logit offset, label voxels)`` from ``(foreground probability, label)`` pairs of
    the labelled training cases. The offset lies halfway (in logits) between the
    label-area-th largest probability and the next one, so that ``shift(p, offset) > 0.5``
    marks exactly the labels' total area (ties apart); ``t = σ(offset)``."""
    probs, area = [], 0
    for prob, label in pairs:
        probs.append(np.asarray(prob, dtype=np.float64).ravel())
        area += int((np.asarray(label) > 0).sum())
    if not probs:
        raise ValueError("no labelled training case to calibrate the output threshold on")
    flat = np.concatenate(probs)
    n = flat.size
    if area <= 0:
        offset = logit(float(flat.max())) + 1.0
    elif area >= n:
        offset = logit(float(flat.min())) - 1.0
    else:
        part = np.partition(flat, [n - area - 1, n - area])
        offset = 0.5 * (logit(float(part[n - area])) + logit(float(part[n - area - 1])))
    return 1.0 / (1.0 + math.exp(-offset)), offset, area


def shift(prob: np.ndarray, offset: float) -> np.ndarray:
    """``σ(logit p − offset)``, float32: ``> 0.5`` exactly where ``logit p > offset``."""
    if offset == 0.0:
        return prob
    p = np.clip(np.asarray(prob, dtype=np.float64), EPS, 1.0 - EPS)
    z = np.log(p) - np.log1p(-p) - offset
    return (0.5 * (1.0 + np.tanh(0.5 * z))).astype(np.float32)
