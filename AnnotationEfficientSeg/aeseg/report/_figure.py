"""Saving matplotlib figures atomically without touching pyplot's global state."""

from __future__ import annotations

import math
import os
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..io.atomic import write_with

DPI = 100


def number(v: object) -> float | None:
    """``v`` as a finite float, or None when missing, non-numeric or NaN/inf (values read
    back from CSV files and event logs are strings or numbers)."""
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def new_figure(width_in: float, height_in: float) -> Figure:
    """A figure bound to its own Agg canvas (never registered with pyplot)."""
    fig = Figure(figsize=(width_in, height_in), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically; returns the path."""
    path = Path(path)
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))
    return path
