"""The shape-prior GAN's sample selection and rounds as a picture (``report/lqss.png``).

Left panel: the LQSS score of every training case (D_B's mean patch realness of its
pseudo label; high = real-looking, kept), as a histogram split into the kept and the
rejected cases, with the threshold α of eq. (9). Right panel, one point per round (round 0
= the CycleGAN's G_A, round k = the U-Net after k rounds of iterative training): the
validation Dice, and the mean Dice between that round's training pseudo labels and the
previous round's (near 1: the rounds have settled).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._figure import new_figure, number, save_png

LQSS_PNG = "lqss.png"
_KEPT, _REJECTED = (0.12, 0.47, 0.71), (0.84, 0.15, 0.16)


@dataclass(frozen=True)
class RoundStat:
    """One round: its index, its validation Dice and the mean Dice of its training pseudo
    labels against the previous round's (None where not measured)."""

    round: int
    val_dice: float | None = None
    change_dice: float | None = None


def score_bins(scores: list[float], n: int = 20) -> np.ndarray:
    """Shared histogram edges for kept and rejected scores (one bin when all are equal)."""
    s = np.asarray([x for x in scores if number(x) is not None], dtype=np.float64)
    if not s.size:
        return np.linspace(0.0, 1.0, n + 1)
    lo, hi = float(s.min()), float(s.max())
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, n + 1)


def plot_lqss(scores: list[float], accepted: list[bool], alpha: float | None, rounds: list[RoundStat],
              path: str | os.PathLike) -> Path:
    """Draw the LQSS histogram (``scores`` and ``accepted`` per training case, threshold
    ``alpha``) and the per-round curves of ``rounds``; returns the path."""
    from matplotlib.ticker import MaxNLocator

    if len(scores) != len(accepted):
        raise ValueError(f"{len(scores)} scores but {len(accepted)} accepted flags")
    fig = new_figure(11.0, 3.6)
    ax, ax_r = fig.subplots(1, 2)
    bins = score_bins(scores)
    kept = [s for s, a in zip(scores, accepted) if a and number(s) is not None]
    rejected = [s for s, a in zip(scores, accepted) if not a and number(s) is not None]
    ax.hist([kept, rejected], bins=bins, stacked=True, color=[_KEPT, _REJECTED],
            label=[f"kept ({len(kept)})", f"rejected ({len(rejected)})"])
    if number(alpha) is not None:
        ax.axvline(float(alpha), color="black", linestyle="--", linewidth=1)
        ax.text(float(alpha), ax.get_ylim()[1] * 0.95, " α", va="top")
    ax.set_xlabel("LQSS score (D_B realness of the pseudo label; high = kept)")
    ax.set_ylabel("training cases")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Sample selection (LQSS)", fontsize=10)
    ax.legend(fontsize=8)
    rs = sorted(rounds, key=lambda r: r.round)
    for attr, label, colour in (("val_dice", "validation Dice", "tab:green"),
                                ("change_dice", "Dice with the previous round's pseudo labels", "tab:purple")):
        pts = [(r.round, float(getattr(r, attr))) for r in rs if number(getattr(r, attr)) is not None]
        if pts:
            ax_r.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=colour, label=label)
    ax_r.set_xlabel("round (0: CycleGAN G_A)")
    ax_r.set_ylim(0, 1.02)
    ax_r.set_title("Iterative training", fontsize=10)
    ax_r.grid(True, alpha=0.3)
    if ax_r.lines:
        ax_r.legend(fontsize=8, loc="lower right")
        ax_r.set_xticks(sorted({r.round for r in rs}))
    else:
        ax_r.text(0.5, 0.5, "no rounds measured", ha="center", va="center", transform=ax_r.transAxes, color="grey")
    fig.tight_layout()
    return save_png(fig, path)
