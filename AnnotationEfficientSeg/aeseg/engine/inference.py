"""Predicting whole cases: slices at training size → probabilities resized to the
case's in-plane size → stacked back onto the case's original grid."""

from __future__ import annotations

import numpy as np
import torch

from ..data.dataset import CaseRecord, SliceSet
from ..data.slicing import from_slices
from ..data.transforms import resize_probabilities


@torch.no_grad()
def predict_case(method, slices: SliceSet, rec: CaseRecord, axis: int, device: torch.device,
                 batch_size: int = 32) -> np.ndarray:
    """Foreground probability ``(Z, Y, X)`` float32 on the case's original grid."""
    out = []
    for s in range(rec.start, rec.start + rec.count, batch_size):
        e = min(s + batch_size, rec.start + rec.count)
        x = slices.images[s:e].to(device)
        p = method.predict_proba(x).float()
        p = resize_probabilities(p, rec.inplane)
        out.append(p[:, 1].cpu().numpy())
    fg = np.concatenate(out, axis=0)  # (N, H, W)
    return from_slices(fg, axis).astype(np.float32)


def predict_records(method, slices: SliceSet, axis: int, device: torch.device, batch_size: int = 32) -> dict[str, np.ndarray]:
    return {rec.case_id: predict_case(method, slices, rec, axis, device, batch_size) for rec in slices.records}
