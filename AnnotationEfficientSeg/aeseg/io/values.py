"""Values read back from CSV files, JSON and event logs (standard library only: the Slicer
module's library uses it too)."""

from __future__ import annotations

import math


def number(v: object) -> float | None:
    """``v`` as a finite float, or None when missing, boolean, non-numeric or NaN/inf
    (values read back are strings or numbers)."""
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None
