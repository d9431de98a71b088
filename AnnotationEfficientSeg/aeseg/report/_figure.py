"""Saving matplotlib figures atomically without touching pyplot's global state."""

from __future__ import annotations

import os
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..io.atomic import write_with
from ..io.values import number  # noqa: F401  (the report modules take it from here)

DPI = 100


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
