"""How a per-pixel map is shown: one rule set for the job report and for 3D Slicer.

Standard library only: the Slicer module imports it without the core's requirements
(numpy, torch, matplotlib). The report (``aeseg.report.overview.map_style``) turns a kind
into a matplotlib colour map and range, the Slicer module
(``AnnotationEfficientSegLib.review.map_display``) into a colour table and window/level.
"""

from __future__ import annotations

import math
from typing import Literal

MapKind = Literal["grey", "diverging", "fraction", "other"]


def map_kind(name: str, low: float, high: float) -> MapKind:
    """The kind of map ``name`` whose finite values span ``low``…``high``.

    - ``grey``: an image-like map (name starting ``absence``, case-blind: the
      healthy-looking translation), shown like the image;
    - ``diverging``: a signed map (``low`` < 0; the additive residual), centred on zero;
    - ``fraction``: a map within 0…1 (confidence, weights, probability), over 0…1;
    - ``other``: anything else, over its own range; also when the range is not finite.
    """
    if name.lower().startswith("absence"):
        return "grey"
    if not (math.isfinite(low) and math.isfinite(high)):
        return "other"
    if low < 0:
        return "diverging"
    if high <= 1:
        return "fraction"
    return "other"
