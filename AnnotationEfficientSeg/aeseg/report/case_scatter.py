"""Two per-case numbers against each other, flagged cases named (``report/<name>.png``).

The colour is the case's ``score``; the flagged cases (to review first) are ringed in red
and named; the dashed line is y = x. Used for MLB-Seg's learned weights (the mean weight
the meta step gave a case's given label against the one it gave the pseudo label: above
the line, the label was trusted less than the model's own prediction) and for
presence/absence (the residual region's area against the segmentation's).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ._figure import new_figure, number, save_png

_FLAG = (0.84, 0.15, 0.16)


@dataclass(frozen=True)
class CasePoint:
    case: str
    x: float | None
    y: float | None
    score: float | None = None
    flagged: bool = False


def finite_points(points: list[CasePoint]) -> list[CasePoint]:
    """The points with finite coordinates (a case never reweighted has none), their values
    as floats (None for a score that is missing or not finite)."""
    return [CasePoint(p.case, number(p.x), number(p.y), number(p.score), p.flagged) for p in points
            if number(p.x) is not None and number(p.y) is not None]


def plot_case_scatter(points: list[CasePoint], path: str | os.PathLike, xlabel: str, ylabel: str,
                      title: str, score_label: str = "score", diagonal: bool = True,
                      max_names: int = 12) -> Path:
    """Scatter of ``points`` (colour: score over 0–1, grey when unknown; flagged: red ring
    and name, the first ``max_names`` of them) with the line y = x; returns the path."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    pts = finite_points(points)
    fig = new_figure(6.4, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    cmap, norm = colormaps["viridis"], Normalize(0.0, 1.0)
    if pts:
        def draw(group: list[CasePoint], **colour) -> None:
            ax.scatter([p.x for p in group], [p.y for p in group], s=30, zorder=3, **colour,
                       edgecolors=[_FLAG if p.flagged else "black" for p in group],
                       linewidths=[1.6 if p.flagged else 0.3 for p in group])

        known = [p for p in pts if p.score is not None]
        unknown = [p for p in pts if p.score is None]
        if known:
            draw(known, c=[p.score for p in known], cmap=cmap, norm=norm)
        if unknown:
            draw(unknown, c="lightgrey")
        for p in [p for p in pts if p.flagged][:max_names]:
            ax.annotate(p.case, (p.x, p.y), xytext=(4, 3), textcoords="offset points", fontsize=7, color=_FLAG)
        if diagonal:
            lo = min(min(p.x for p in pts), min(p.y for p in pts))
            hi = max(max(p.x for p in pts), max(p.y for p in pts))
            pad = 0.05 * (hi - lo or 1.0)
            ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="grey", linestyle="--", linewidth=0.8)
        bar = fig.colorbar(ScalarMappable(norm, cmap), ax=ax, fraction=0.05, pad=0.02)
        bar.set_label(score_label, fontsize=8)
    else:
        ax.text(0.5, 0.5, "no cases", ha="center", va="center", transform=ax.transAxes, color="grey")
    n_flag = sum(p.flagged for p in pts)
    ax.set_title(f"{title} ({len(pts)} cases, {n_flag} flagged)", fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return save_png(fig, path)
