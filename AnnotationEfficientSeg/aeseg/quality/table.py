"""``quality.csv``: one row per case, the review queue the Slicer module shows.

Columns: ``case, method, score, flag, rank`` (``score``: higher = more trustworthy
label; ``rank``: review order, 1 first; ``flag``: ``true`` when the case should be
reviewed), then ``split``, ``label_kind`` and the method's own columns. Cases are ranked
flagged first, then by increasing score; cases without a score come last.
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Any

from ..io.atomic import write_text
from ..methods.base import CaseQuality

BASE_COLUMNS = ("case", "method", "score", "flag", "rank")


def rank_rows(rows: list[CaseQuality], flag_fraction: float) -> list[dict[str, Any]]:
    """Flag (where the method did not) the lowest ``flag_fraction`` of scored cases and rank all."""
    scored = [r for r in rows if r.score is not None and math.isfinite(r.score)]
    n_flag = int(math.ceil(flag_fraction * len(scored))) if scored and flag_fraction > 0 else 0
    lowest = {r.case for r in sorted(scored, key=lambda r: r.score)[:n_flag]}
    flags = {r.case: (r.flag if r.flag is not None else r.case in lowest) for r in rows}

    def key(r: CaseQuality):
        s = r.score if r.score is not None and math.isfinite(r.score) else math.inf
        return (not flags[r.case], s, r.case)

    out = []
    for rank, r in enumerate(sorted(rows, key=key), start=1):
        out.append({"case": r.case, "score": r.score, "flag": flags[r.case], "rank": rank, **r.columns})
    return out


def write_quality_csv(path: str | os.PathLike, method: str, ranked: list[dict[str, Any]]) -> None:
    extra: list[str] = []
    for r in ranked:
        for k in r:
            if k not in BASE_COLUMNS and k not in extra:
                extra.append(k)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*BASE_COLUMNS, *extra])
    for r in ranked:
        w.writerow([r["case"], method, _fmt(r["score"]), "true" if r["flag"] else "false", r["rank"],
                    *[_fmt(r.get(k)) for k in extra]])
    write_text(path, buf.getvalue())


def read_quality_csv(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a quality.csv with ``score`` as float, ``flag`` as bool and ``rank`` as int."""
    rows = []
    with open(Path(path), newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            r["score"] = float(r["score"]) if r.get("score") not in (None, "") else None
            r["flag"] = str(r.get("flag", "")).lower() == "true"
            r["rank"] = int(r["rank"])
            rows.append(r)
    return sorted(rows, key=lambda r: r["rank"])


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "" if not math.isfinite(v) else f"{v:.6g}"
    return str(v)
