"""A grid of case thumbnails with each mask drawn as a coloured contour, and each case's
per-pixel maps (the presence/absence residual, AIDE's confidence…) drawn beside it."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib import patheffects
from matplotlib.lines import Line2D

from ..io.segmentation import SEGMENT_COLOURS
from ..quality.map_kinds import map_kind
from ._figure import new_figure, save_png

# Colours for mask names that SEGMENT_COLOURS does not know (matplotlib tab10).
FALLBACK_COLOURS = (
    (0.12, 0.47, 0.71), (1.00, 0.50, 0.05), (0.17, 0.63, 0.17), (0.84, 0.15, 0.16), (0.58, 0.40, 0.74),
    (0.55, 0.34, 0.29), (0.89, 0.47, 0.76), (0.50, 0.50, 0.50), (0.74, 0.74, 0.13), (0.09, 0.75, 0.81),
)
MAX_COLUMNS = 4
MAX_MAPS = 3  # map panels beside each case's image
PANEL_INCHES = 3.0


@dataclass
class OverviewCase:
    """One panel: a 2D image (``(Y, X)`` grey or ``(Y, X, 3)`` RGB) and named binary masks."""

    case_id: str
    image_2d: np.ndarray
    masks: dict[str, np.ndarray] = field(default_factory=dict)  # name → (Y, X) bool
    subtitle: str = ""
    maps: dict[str, np.ndarray] = field(default_factory=dict)  # name → (Y, X) float, drawn beside the image


def mask_colours(names: list[str]) -> dict[str, tuple[float, float, float]]:
    """Colour per mask name: the project's segment colour when it has one, else a distinct fallback."""
    out: dict[str, tuple[float, float, float]] = {}
    used = {SEGMENT_COLOURS[n] for n in names if n in SEGMENT_COLOURS}
    spare = [c for c in FALLBACK_COLOURS if c not in used]
    for i, n in enumerate(x for x in names if x not in SEGMENT_COLOURS):
        out[n] = spare[i % len(spare)]
    for n in names:
        if n in SEGMENT_COLOURS:
            out[n] = SEGMENT_COLOURS[n]
    return out


def _display_image(img: np.ndarray, case_id: str) -> tuple[np.ndarray, bool]:
    """Image scaled to [0, 1] by its 1st–99th percentiles; returns (array, is_rgb)."""
    a = np.asarray(img, dtype=np.float64)
    rgb = a.ndim == 3 and a.shape[-1] == 3
    if a.ndim != 2 and not rgb:
        raise ValueError(f"case '{case_id}': image_2d must be (Y, X) or (Y, X, 3), got shape {a.shape}")
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        return np.zeros(a.shape), rgb
    lo, hi = np.percentile(finite, [1, 99])
    if hi <= lo:
        lo, hi = float(finite.min()), float(finite.max())
    scaled = (np.nan_to_num(a, nan=lo) - lo) / (hi - lo) if hi > lo else np.zeros(a.shape)
    return np.clip(scaled, 0.0, 1.0), rgb


def map_style(name: str, values: np.ndarray) -> tuple[str, float, float]:
    """Colour map and range of a per-pixel map panel, by the map's kind
    (:func:`aeseg.quality.map_kinds.map_kind`, the rules Slicer's display follows too).

    ``grey`` (an absence image) is drawn between its 1st and 99th percentiles, like the
    image; ``diverging`` (the additive residual) is ``RdBu_r`` centred on zero over its
    largest magnitude, so that added and removed intensity read as red and blue and the
    residual's noise floor stays pale; ``fraction`` (confidence, weights, probability) is
    ``viridis`` over 0–1; ``other`` is ``viridis`` over its 1st–99th percentiles. A map
    without a finite value is ``viridis`` over 0–1.
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return "viridis", 0.0, 1.0
    kind = map_kind(name, float(v.min()), float(v.max()))
    if kind == "diverging":
        m = float(np.abs(v).max())
        return "RdBu_r", -m, m
    if kind == "fraction":
        return "viridis", 0.0, 1.0
    lo, hi = (float(x) for x in np.percentile(v, [1, 99]))
    return ("gray" if kind == "grey" else "viridis"), lo, hi if hi > lo else lo + 1.0


def _contours(ax, case: OverviewCase, colours: dict[str, tuple[float, float, float]], h: int, w: int,
              width: float, outline: bool = False) -> None:
    # Pad with background so masks touching the border (or filling the image) still get a contour.
    xs, ys = np.arange(-1, w + 1), np.arange(-1, h + 1)
    for name, mask in case.masks.items():
        m = np.asarray(mask) != 0
        if m.shape != (h, w):
            raise ValueError(f"case '{case.case_id}': mask '{name}' has shape {m.shape}, image is {(h, w)}")
        if not m.any():
            continue
        cs = ax.contour(xs, ys, np.pad(m, 1).astype(np.float32), levels=[0.5], colors=[colours[name]], linewidths=width)
        if outline:  # a dark edge keeps the contour visible on a coloured map
            cs.set(path_effects=[patheffects.withStroke(linewidth=width + 1.5, foreground="black")])
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])


def _draw_case(ax, case: OverviewCase, colours: dict[str, tuple[float, float, float]]) -> None:
    img, rgb = _display_image(case.image_2d, case.case_id)
    h, w = img.shape[:2]
    ax.imshow(img, cmap=None if rgb else "gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    _contours(ax, case, colours, h, w, 1.3)
    ax.set_title(case.case_id + (f"\n{case.subtitle}" if case.subtitle else ""), fontsize=9)


def _draw_map(ax, case: OverviewCase, name: str, colours: dict[str, tuple[float, float, float]]) -> None:
    """One map panel: the map in its colour scale with a colour bar, the masks' contours edged in black."""
    h, w = np.shape(case.image_2d)[:2]
    values = np.asarray(case.maps[name], dtype=np.float64)
    if values.shape != (h, w):
        raise ValueError(f"case '{case.case_id}': map '{name}' has shape {values.shape}, image is {(h, w)}")
    cmap, vmin, vmax = map_style(name, values)
    im = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=7)
    _contours(ax, case, colours, h, w, 1.0, outline=True)
    ax.set_title(name, fontsize=9)


def plot_overview(cases: list[OverviewCase], path: str | os.PathLike, title: str = "",
                  colours: dict[str, tuple[float, float, float]] | None = None) -> Path:
    """Grid of ``cases`` (up to four per row) with mask contours and a legend, saved as PNG.

    When a case has maps, every case takes a row: its image, then up to :data:`MAX_MAPS`
    of its maps (see :func:`map_style`), each with the masks' contours. Empty masks are
    listed in the legend but draw nothing; an empty ``cases`` list gives a placeholder image.
    ``colours`` overrides the colour of masks by name (others: :func:`mask_colours`).
    """
    names: list[str] = []
    for c in cases:
        names.extend(n for n in c.masks if n not in names)
    colours = {**mask_colours(names), **(colours or {})}
    n = len(cases)
    n_maps = min(max((len(c.maps) for c in cases), default=0), MAX_MAPS)
    if n_maps:
        ncols, nrows = 1 + n_maps, max(n, 1)
    else:
        ncols = min(max(n, 1), MAX_COLUMNS)
        nrows = max(1, math.ceil(n / ncols))
    aspect = max((np.shape(c.image_2d)[0] / max(np.shape(c.image_2d)[1], 1) for c in cases), default=1.0)
    row_inches = PANEL_INCHES * float(np.clip(aspect, 0.25, 2.0)) + 0.5  # image + two title lines
    legend_in, title_in = (0.5 if names else 0.1), (0.45 if title else 0.1)
    fig = new_figure(PANEL_INCHES * ncols, row_inches * nrows + legend_in + title_in)
    grid = fig.subplots(nrows, ncols, squeeze=False)
    if n_maps:
        for row, case in zip(grid, cases):
            _draw_case(row[0], case, colours)
            names_here = list(case.maps)[:n_maps]
            for ax, name in zip(row[1:], names_here):
                _draw_map(ax, case, name, colours)
            for ax in row[1 + len(names_here):]:
                ax.axis("off")
        axes = grid[:, 0]
    else:
        axes = grid.ravel()
        for ax, case in zip(axes, cases):
            _draw_case(ax, case, colours)
    for ax in axes[n:]:
        ax.axis("off")
    if n == 0:
        axes[0].text(0.5, 0.5, "no cases to show", ha="center", va="center", color="grey")
    if title:
        fig.suptitle(title, y=1.0 - 0.08 / fig.get_figheight(), va="top")
    if names:
        handles = [Line2D([0], [0], color=colours[nm], linewidth=2) for nm in names]
        fig.legend(handles, names, loc="lower center", ncol=min(len(names), 5), frameon=False, fontsize=9)
    height = fig.get_figheight()
    fig.subplots_adjust(left=0.02, right=0.94 if n_maps else 0.98,  # room for the colour bars' labels
                        bottom=legend_in / height, top=1.0 - (title_in + 0.4) / height,
                        wspace=0.3 if n_maps else 0.05, hspace=0.5 / (row_inches - 0.5))
    return save_png(fig, path)
