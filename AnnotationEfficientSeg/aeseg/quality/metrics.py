"""Per-case segmentation metrics in physical units (millimetres), computed with MONAI.

Dice, the 95th-percentile Hausdorff distance (HD95) and the average symmetric surface
distance (ASSD) come from :mod:`monai.metrics` (``compute_dice``,
``compute_hausdorff_distance(percentile=95)`` and
``compute_average_surface_distance(symmetric=True)``). MONAI has no relative volume
difference, so RAVD (``|Vp - Vr| / Vr``) is computed here from voxel counts (the voxel
volume cancels out).

Array and spacing order: masks are numpy ``(Z, Y, X)`` arrays while spacings follow
ITK's ``(x, y, z)`` order (:class:`aeseg.cohort.reading.Geometry`); MONAI wants the
spacing in array-axis order, so it gets ``(z, y, x)``. A one-slice volume (``Z == 1``)
is measured as a 2D image with spacing ``(y, x)``: treating it as 3D would make the
whole mask its own surface (every voxel touches the empty slices above and below).

Empty masks, by definition here:

* both empty: ``dice`` 1, ``hd95`` 0, ``assd`` 0, ``ravd`` 0 (perfect agreement);
* exactly one empty: ``dice`` 0, ``hd95`` and ``assd`` NaN (no surface to measure to);
  ``ravd`` is 1 when only the prediction is empty and NaN when only the reference is
  (division by a zero volume).

:func:`summarize` ignores NaNs, so these cases do not poison the cohort means; the
``n`` it reports per metric says how many cases contributed.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np

METRIC_NAMES = ("dice", "hd95", "assd", "ravd")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient ``2|A∩B| / (|A| + |B|)`` of two binary arrays (non-zero = foreground).

    Both empty gives 1.0. Fast numpy; agrees with MONAI's ``compute_dice``.
    """
    a = np.asarray(a) != 0
    b = np.asarray(b) != 0
    if a.shape != b.shape:
        raise ValueError(f"dice: shapes differ, {a.shape} vs {b.shape}")
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(a, b).sum()) / total


def _as_spatial(pred: np.ndarray, ref: np.ndarray, spacing_xyz: Sequence[float]
                ) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Binary arrays in array order plus the matching spacing (array order).

    ``(Z, Y, X)`` with ``Z > 1`` → 3D with spacing ``(z, y, x)``; ``(1, Y, X)`` or ``(Y, X)``
    → 2D with spacing ``(y, x)``.
    """
    pred = np.asarray(pred) != 0
    ref = np.asarray(ref) != 0
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    sp = tuple(float(s) for s in spacing_xyz)
    if pred.ndim == 3 and pred.shape[0] == 1:
        pred, ref = pred[0], ref[0]
    if pred.ndim == 3:
        if len(sp) != 3:
            raise ValueError(f"a 3D volume needs a spacing (x, y, z), got {spacing_xyz}")
        return pred, ref, (sp[2], sp[1], sp[0])
    if pred.ndim == 2:
        if len(sp) not in (2, 3):
            raise ValueError(f"a 2D image needs a spacing (x, y) or (x, y, z), got {spacing_xyz}")
        return pred, ref, (sp[1], sp[0])
    raise ValueError(f"masks must be (Z, Y, X) or (Y, X), got shape {pred.shape}")


def _ravd(n_pred: int, n_ref: int) -> float:
    """Relative absolute volume difference from voxel counts (NaN if the reference is empty)."""
    if n_ref == 0:
        return 0.0 if n_pred == 0 else math.nan
    return abs(n_pred - n_ref) / n_ref


def case_metrics(pred_zyx: np.ndarray, ref_zyx: np.ndarray, spacing_xyz: Sequence[float]) -> dict[str, float]:
    """Dice, HD95 (mm), ASSD (mm) and RAVD of one binary prediction against its reference.

    ``pred_zyx`` and ``ref_zyx`` are binary ``(Z, Y, X)`` arrays (``(Y, X)`` accepted);
    ``spacing_xyz`` is the voxel spacing in ITK order ``(x, y, z)``, e.g.
    ``Geometry.spacing``. See the module docstring for empty masks.
    """
    import torch
    from monai.metrics import compute_average_surface_distance, compute_dice, compute_hausdorff_distance

    pred, ref, spacing = _as_spatial(pred_zyx, ref_zyx, spacing_xyz)
    n_pred, n_ref = int(pred.sum()), int(ref.sum())
    ravd = _ravd(n_pred, n_ref)
    if n_pred == 0 and n_ref == 0:
        return {"dice": 1.0, "hd95": 0.0, "assd": 0.0, "ravd": ravd}
    if n_pred == 0 or n_ref == 0:
        return {"dice": 0.0, "hd95": math.nan, "assd": math.nan, "ravd": ravd}

    # MONAI wants (batch, channel, *spatial) one-hot tensors; one foreground channel.
    yp = torch.from_numpy(pred[None, None].astype(np.float32))
    yt = torch.from_numpy(ref[None, None].astype(np.float32))
    with warnings.catch_warnings():
        # MONAI 1.5+ warns about an argument its own surface-distance code still passes.
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        d = compute_dice(yp, yt, include_background=True, ignore_empty=False)
        hd95 = compute_hausdorff_distance(yp, yt, include_background=True, percentile=95, spacing=list(spacing))
        assd = compute_average_surface_distance(yp, yt, include_background=True, symmetric=True,
                                                spacing=list(spacing))
    return {"dice": float(d.item()), "hd95": float(hd95.item()), "assd": float(assd.item()), "ravd": ravd}


def summarize(rows: list[dict]) -> dict:
    """Mean, sample SD (ddof=1) and count per numeric metric across ``rows``, ignoring NaN.

    Returns ``{"count": len(rows), "<metric>": {"mean": m, "sd": s, "n": k}, ...}`` for
    every key holding numbers (booleans and text such as ``case`` are skipped); ``k``
    is the number of finite values, ``sd`` is NaN when ``k < 2`` and ``mean`` is NaN
    when ``k == 0``.
    """
    keys: list[str] = []
    for row in rows:
        for k, v in row.items():
            if k not in keys and _is_number(v):
                keys.append(k)
    out: dict = {"count": len(rows)}
    for k in keys:
        vals = np.array([float(r[k]) for r in rows if _is_number(r.get(k))], dtype=float)
        vals = vals[np.isfinite(vals)]
        n = int(vals.size)
        out[k] = {
            "mean": float(vals.mean()) if n else math.nan,
            "sd": float(vals.std(ddof=1)) if n >= 2 else math.nan,
            "n": n,
        }
    return out


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
