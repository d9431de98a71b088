"""AIDE's correction history as a picture (``report/corrections.png``).

``corrections.csv`` lists every global label correction (case, epoch, network, Dice of the
written label against the given one); a reviewer wants to see at a glance which cases the
networks kept rewriting, when, and how far the final label moved from the given one. Left
panel: one row per case in review order (rank 1 at the top, flagged names in red), one
marker per correction at its epoch (circle: network 1 wrote it, square: network 2), coloured
by the Dice between the written label and the given label (dark: far from it). Right panel:
``aide_dice_change`` = 1 − Dice(given label, final corrected label) per case.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from ._figure import new_figure, number, save_png

CORRECTIONS_PNG = "corrections.png"
_FLAG = (0.84, 0.15, 0.16)
_MARKERS = ("o", "s")


@dataclass(frozen=True)
class CaseCorrections:
    """One case's row of the figure: its name, whether it is flagged, and its final change."""

    case: str
    flagged: bool = False
    dice_change: float | None = None  # 1 − Dice(given, final corrected label)


def correction_points(history: list[dict], cases: list[CaseCorrections]) -> dict[int, list[tuple[float, int, float]]]:
    """Network (1 or 2) → its corrections of ``cases`` as (epoch, row of the case in
    ``cases``, Dice of the written label against the given one; NaN when unknown, drawn grey).

    ``history`` rows: ``case``, ``epoch``, ``network``, ``dice_new_vs_given`` (as in
    ``corrections.csv``; strings or numbers); rows of other cases or without an epoch are left out.
    """
    row_of = {c.case: i for i, c in enumerate(cases)}
    out: dict[int, list[tuple[float, int, float]]] = {1: [], 2: []}
    for h in history:
        i, e, d = row_of.get(str(h.get("case"))), number(h.get("epoch")), number(h.get("dice_new_vs_given"))
        if i is None or e is None:
            continue
        out[2 if number(h.get("network")) == 2 else 1].append((e, i, math.nan if d is None else d))
    return out


def plot_corrections(history: list[dict], cases: list[CaseCorrections], path: str | os.PathLike,
                     max_cases: int = 40) -> Path:
    """Draw the correction history (:func:`correction_points`) of ``cases`` (review order;
    the first ``max_cases``) to ``path``; returns the path."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.lines import Line2D

    shown = cases[:max_cases]
    fig = new_figure(10.0, 1.4 + 0.24 * max(len(shown), 3))
    ax, ax_bar = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 1]}, sharey=True)
    cmap, norm = colormaps["viridis"], Normalize(0.0, 1.0)
    points = correction_points(history, shown)
    for net, pts in points.items():
        dx = 0.18 if net == 2 else -0.18  # the two networks side by side when both rewrote a case at one epoch
        known = [p for p in pts if math.isfinite(p[2])]
        unknown = [p for p in pts if not math.isfinite(p[2])]
        if known:
            ax.scatter([e + dx for e, _, _ in known], [i for _, i, _ in known], c=[d for _, _, d in known],
                       cmap=cmap, norm=norm, marker=_MARKERS[net - 1], s=28, edgecolors="black", linewidths=0.3)
        if unknown:
            ax.scatter([e + dx for e, _, _ in unknown], [i for _, i, _ in unknown], c="lightgrey",
                       marker=_MARKERS[net - 1], s=28, edgecolors="black", linewidths=0.3)
    epochs = [e for pts in points.values() for e, _, _ in pts]
    ys = list(range(len(shown)))
    ax.set_yticks(ys, [c.case for c in shown], fontsize=7)
    for tick, c in zip(ax.get_yticklabels(), shown):
        if c.flagged:
            tick.set_color(_FLAG)
            tick.set_fontweight("bold")
    ax.set_ylim(len(shown) - 0.5, -0.5)  # rank 1 at the top
    ax.set_xlabel("epoch")
    ax.grid(True, axis="x", alpha=0.3)
    if epochs:
        ax.set_xlim(min(epochs) - 1, max(epochs) + 1)
        handles = [Line2D([], [], marker=m, linestyle="", color="grey", markeredgecolor="black",
                          label=f"network {k + 1}") for k, m in enumerate(_MARKERS)]
        ax.legend(handles=handles, fontsize=7, loc="lower right")
        bar = fig.colorbar(ScalarMappable(norm, cmap), ax=ax, pad=0.01, fraction=0.03)
        bar.set_label("Dice(written label, given label)", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no corrections", ha="center", va="center", transform=ax.transAxes, color="grey")
    n = len(epochs)
    more = f" (first {len(shown)} of {len(cases)} cases)" if len(cases) > len(shown) else ""
    ax.set_title(f"Label corrections: {n}{more}", fontsize=9)
    changes = [c.dice_change for c in shown]
    ax_bar.barh(ys, [0.0 if v is None else v for v in changes], height=0.6,
                color=[_FLAG if c.flagged else (0.5, 0.5, 0.5) for c in shown])
    ax_bar.set_xlim(0, 1)
    ax_bar.set_xlabel("1 − Dice(given, final)")
    ax_bar.set_title("Final change", fontsize=9)
    ax_bar.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    return save_png(fig, path)
