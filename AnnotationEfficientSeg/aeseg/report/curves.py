"""Loss and validation-Dice curves from a training history."""

from __future__ import annotations

import os
from pathlib import Path

from matplotlib.ticker import MaxNLocator

from ._figure import new_figure, number, save_png


def loss_series(history: list[dict]) -> dict[str, list[tuple[float, float]]]:
    """``{label: [(epoch, value), ...]}`` for every loss; labels carry the phase when
    the history has more than one phase (``"stage1: loss"``)."""
    phases = {str(h.get("phase", "")) for h in history if h.get("losses")}
    series: dict[str, list[tuple[float, float]]] = {}
    for h in history:
        epoch = number(h.get("epoch"))
        if epoch is None:
            continue
        for name, value in (h.get("losses") or {}).items():
            v = number(value)
            if v is None:
                continue
            label = f"{h.get('phase', '')}: {name}" if len(phases) > 1 else str(name)
            series.setdefault(label, []).append((epoch, v))
    return series


def val_dice_series(history: list[dict]) -> list[tuple[float, float]]:
    """``[(epoch, val_dice), ...]`` for the entries that carry a validation Dice."""
    pts = []
    for h in history:
        epoch, v = number(h.get("epoch")), number(h.get("val_dice"))
        if epoch is not None and v is not None:
            pts.append((epoch, v))
    return sorted(pts)


def plot_curves(history: list[dict], path: str | os.PathLike) -> Path:
    """Two panels, every loss vs epoch and validation Dice vs epoch, saved as PNG.

    ``history`` holds per-epoch dicts such as ``{"epoch": 3, "phase": "train",
    "losses": {"loss": 0.5, "seg": 0.3}, "val_dice": 0.71}``; missing or NaN values
    are skipped and an empty panel says so.
    """
    fig = new_figure(11.0, 4.0)
    ax_loss, ax_dice = fig.subplots(1, 2)
    losses = loss_series(history)
    for label, pts in losses.items():
        pts = sorted(pts)
        ax_loss.plot([p[0] for p in pts], [p[1] for p in pts], label=label,
                     marker="o" if len(pts) <= 30 else None, markersize=3)
    _finish(ax_loss, "Training losses", "loss", bool(losses), "no loss values")
    if losses:
        ax_loss.legend(fontsize=8)
    dice_pts = val_dice_series(history)
    if dice_pts:
        ax_dice.plot([p[0] for p in dice_pts], [p[1] for p in dice_pts], color="tab:green",
                     marker="o" if len(dice_pts) <= 30 else None, markersize=3)
        best = max(dice_pts, key=lambda p: p[1])
        ax_dice.axhline(best[1], color="grey", linewidth=0.8, linestyle="--")
        ax_dice.set_title(f"Validation Dice (best {best[1]:.3f} at epoch {best[0]:g})")
    _finish(ax_dice, None, "Dice", bool(dice_pts), "no validation Dice")
    if not dice_pts:
        ax_dice.set_title("Validation Dice")
    fig.tight_layout()
    return save_png(fig, path)


def _finish(ax, title: str | None, ylabel: str, has_data: bool, empty_text: str) -> None:
    if title:
        ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if not has_data:
        ax.text(0.5, 0.5, empty_text, ha="center", va="center", transform=ax.transAxes, color="grey")
