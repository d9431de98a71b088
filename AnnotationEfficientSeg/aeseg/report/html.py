"""The job report: ``loss_curves.png``, ``overview.png`` and a self-contained ``report.html``."""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from html import escape
from pathlib import Path

from ..io.atomic import write_text
from .curves import plot_curves, val_dice_series
from .overview import OverviewCase, plot_overview

CURVES_PNG = "loss_curves.png"
OVERVIEW_PNG = "overview.png"
REPORT_HTML = "report.html"

# job_summary keys shown first, with their labels; any other keys follow as given.
SUMMARY_FIELDS = (
    ("method", "Method"),
    ("cohort", "Cohort"),
    ("epochs", "Epochs"),
    ("best_val_dice", "Best validation Dice"),
    ("wall_time_s", "Wall time"),
    ("device", "Device"),
)
# Other spellings of those keys (after normalisation: lower case, non-alphanumerics → "_").
SUMMARY_ALIASES = {
    "best_val_dice": "best_val_dice", "best_validation_dice": "best_val_dice", "best_dice": "best_val_dice",
    "wall_time_s": "wall_time_s", "wall_time": "wall_time_s", "wall_s": "wall_time_s",
    "training_time_s": "wall_time_s", "elapsed_s": "wall_time_s",
    "method": "method", "cohort": "cohort", "epochs": "epochs", "device": "device",
}
QUALITY_FIRST = ("rank", "case", "method", "score", "flag")


@dataclass(frozen=True)
class ReportFigure:
    """A method's own figure in the report (e.g. AIDE's correction history): a section
    heading, the PNG's file name inside the report folder, and its alt text."""

    title: str
    file: str
    alt: str = ""

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f0f0f0; }
tr.flagged td { background: #fde2e1; font-weight: 600; }
img { max-width: 100%; border: 1px solid #ddd; }
.muted { color: #777; }
"""


def is_flagged(value: object) -> bool:
    """A ``flag`` cell as a bool (accepts booleans and CSV text such as ``true``/``1``)."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "y")
    if value is None:
        return False
    if isinstance(value, float) and math.isnan(value):
        return False
    return bool(value)


def format_value(value: object) -> str:
    """Cell text: floats to 4 significant digits, NaN/None empty, everything else ``str``."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str)
    return str(value)


def format_duration(seconds: object) -> str:
    """``3725`` → ``1:02:05``; non-numbers are returned as text."""
    try:
        s = int(round(float(seconds)))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return format_value(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _rank_key(row: dict) -> tuple[float, str]:
    try:
        r = float(row.get("rank"))  # type: ignore[arg-type]
        r = r if math.isfinite(r) else math.inf
    except (TypeError, ValueError):
        r = math.inf
    return (r, str(row.get("case", "")))


def sort_by_rank(rows: list[dict]) -> list[dict]:
    """Rows in review order (rank 1 first; rows without a rank last, by case)."""
    return sorted(rows, key=_rank_key)


def _normalise_key(key: str) -> str:
    k = re.sub(r"[^0-9a-z]+", "_", str(key).lower()).strip("_")
    return SUMMARY_ALIASES.get(k, k)


def _summary_rows(job_summary: dict, history: list[dict]) -> list[tuple[str, str]]:
    """(label, text) rows: the standard fields (``n/a`` when unknown), then the other keys."""
    known = {k for k, _ in SUMMARY_FIELDS}
    standard: dict[str, object] = {}
    extra: list[tuple[str, object]] = []
    for key, value in job_summary.items():
        nk = _normalise_key(key)
        if nk in known and standard.get(nk) is None:
            standard[nk] = value
        else:
            extra.append((str(key), value))
    if standard.get("best_val_dice") is None:
        pts = val_dice_series(history)
        if pts:
            standard["best_val_dice"] = max(v for _, v in pts)
    rows = []
    for key, label in SUMMARY_FIELDS:
        value = standard.get(key)
        text = format_duration(value) if key == "wall_time_s" and value is not None else format_value(value)
        rows.append((label, text or "n/a"))
    rows.extend((k, format_value(v)) for k, v in extra)
    return rows


def _quality_table(rows: list[dict]) -> str:
    if not rows:
        return '<p class="muted">No quality table.</p>'
    cols = [c for c in QUALITY_FIRST if any(c in r for r in rows)]
    for r in rows:
        cols.extend(k for k in r if k not in cols)
    head = "".join(f"<th>{escape(str(c))}</th>" for c in cols)
    body = []
    for r in sort_by_rank(rows):
        cls = ' class="flagged"' if is_flagged(r.get("flag")) else ""
        cells = "".join(f"<td>{escape(format_value(r.get(c)))}</td>" for c in cols)
        body.append(f"<tr{cls}>{cells}</tr>")
    n_flag = sum(is_flagged(r.get("flag")) for r in rows)
    return (f"<p>{len(rows)} cases, {n_flag} flagged for review (highlighted), in review order.</p>\n"
            f"<table class=\"quality\"><thead><tr>{head}</tr></thead><tbody>\n" + "\n".join(body)
            + "\n</tbody></table>")


def render_html(job_summary: dict, history: list[dict], quality_rows: list[dict],
                figures: list[ReportFigure] | tuple[ReportFigure, ...] = ()) -> str:
    """The report page as text; images are referenced by relative path. ``figures``: the
    method's own figures, each a section after the overview."""
    method = format_value(job_summary.get("method")) or "job"
    summary = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>"
                      for k, v in _summary_rows(job_summary, history))
    extra = "".join(f'<h2>{escape(f.title)}</h2>\n<img src="{escape(f.file)}" alt="{escape(f.alt or f.title)}">\n'
                    for f in figures)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>AnnotationEfficientSeg report: {escape(method)}</title>
<style>{_CSS}</style>
</head>
<body>
<h1>AnnotationEfficientSeg report: {escape(method)}</h1>
<h2>Job</h2>
<table class="summary">{summary}</table>
<h2>Training curves</h2>
<img src="{CURVES_PNG}" alt="loss and validation Dice curves">
<h2>Overview</h2>
<img src="{OVERVIEW_PNG}" alt="cases with their labels">
{extra}<h2>Quality</h2>
{_quality_table(quality_rows)}
</body>
</html>
"""


def write_report(report_dir: str | os.PathLike, job_summary: dict, history: list[dict],
                 overview_cases: list[OverviewCase], quality_rows: list[dict],
                 overview_title: str = "Cases in review order",
                 figures: list[ReportFigure] | tuple[ReportFigure, ...] = ()) -> list[Path]:
    """Write ``loss_curves.png``, ``overview.png`` and ``report.html`` into ``report_dir``.
    ``figures``: PNGs the method already wrote into ``report_dir``, shown after the overview.

    ``job_summary`` keys shown first: ``method``, ``cohort``, ``epochs``,
    ``best_val_dice`` (taken from ``history`` when absent), ``wall_time_s`` (shown as
    h:mm:ss) and ``device``, in any spelling of :data:`SUMMARY_ALIASES` (``"best val
    Dice"``, ``"training time (s)"``…); other keys follow, dicts as JSON. ``quality_rows`` are quality.csv rows (``case``,
    ``score``, ``flag``, ``rank``…), shown in rank order with flagged rows highlighted.
    Every file is written atomically; returns the written paths.
    """
    out = Path(report_dir)
    missing = [f.file for f in figures if not (out / f.file).is_file()]
    if missing:  # before anything is written
        raise FileNotFoundError(f"report figures not in {out}: {', '.join(missing)}")
    out.mkdir(parents=True, exist_ok=True)
    curves = plot_curves(history, out / CURVES_PNG)
    overview = plot_overview(overview_cases, out / OVERVIEW_PNG, overview_title)
    page = out / REPORT_HTML
    write_text(page, render_html(job_summary, history, quality_rows, figures))
    return [curves, overview, *(out / f.file for f in figures), page]
