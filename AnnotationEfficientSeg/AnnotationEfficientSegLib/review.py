"""The review queue: a job's ``quality.csv`` sorted by rank, and which cases were reviewed.

``quality.csv`` has ``case, method, score, flag, rank`` and then the method's own columns,
kept in file order. Reviewed cases are stored in ``JOB/review.json`` (written atomically),
so a queue survives closing Slicer. :func:`case_files` finds what Slicer loads for a case.
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from aeseg.io.atomic import plain_mode  # stdlib only: no core requirement needed
from aeseg.quality.map_kinds import map_kind  # stdlib only as well

QUALITY_FILE = "quality.csv"
REVIEW_FILE = "review.json"
BASE_COLUMNS = ("case", "method", "score", "flag", "rank")
IMAGE_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm")

_TRUE = {"true", "1", "yes", "y", "t"}

# The segments Slicer shows for a case under review, with distinct colours (RGB 0-1);
# the same colours as the core's .seg.nrrd writer.
REVIEW_SEGMENTS = (
    ("Given label", (0.95, 0.80, 0.20)),
    ("Pseudo label", (0.20, 0.70, 0.95)),
    ("Corrected", (0.30, 0.85, 0.35)),
)


def parse_bool(v: Any) -> bool:
    return str(v).strip().lower() in _TRUE


def parse_value(v: Any) -> Any:
    """A CSV cell as int, float, bool (``true``/``false``) or the string itself."""
    if v is None:
        return None
    s = str(v).strip()
    if s == "":
        return None
    low = s.lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(s)
    except ValueError:
        pass
    try:
        f = float(s)
        return f
    except ValueError:
        return s


def format_value(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.4g}"
    return str(v)


@dataclass
class ReviewRow:
    case: str
    method: str = ""
    score: float | None = None
    flag: bool = False
    rank: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    reviewed: bool = False
    reviewed_at: str | None = None
    refined_path: str | None = None

    def value(self, column: str) -> Any:
        if column in ("case", "method", "score", "flag", "rank", "reviewed"):
            return getattr(self, column)
        return self.extra.get(column)


def _atomic_write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, plain_mode(path))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class ReviewQueue:
    """Rows of ``quality.csv`` in review order (rank 1 first) with reviewed marks from ``review.json``."""

    def __init__(self, job_dir: str | os.PathLike, rows: list[ReviewRow], extra_columns: list[str]) -> None:
        self.job_dir = Path(job_dir)
        self.rows = rows
        self.extra_columns = extra_columns
        self._by_case = {r.case: r for r in rows}

    # -- loading

    @classmethod
    def load(cls, job_dir: str | os.PathLike) -> "ReviewQueue":
        """Read ``JOB/quality.csv`` (an empty queue if there is none yet) and ``JOB/review.json``."""
        job_dir = Path(job_dir)
        path = job_dir / QUALITY_FILE
        rows: list[ReviewRow] = []
        extra: list[str] = []
        if path.exists():
            with open(path, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                fields = [c.strip() for c in (reader.fieldnames or [])]
                if "case" not in fields:
                    raise ValueError(f"{path}: no 'case' column (columns: {', '.join(fields)})")
                extra = [c for c in fields if c not in BASE_COLUMNS]
                for raw in reader:
                    rec = {(k or "").strip(): v for k, v in raw.items()}
                    case = (rec.get("case") or "").strip()
                    if not case:
                        continue
                    score = parse_value(rec.get("score"))
                    rank = parse_value(rec.get("rank"))
                    rows.append(ReviewRow(
                        case=case,
                        method=(rec.get("method") or "").strip(),
                        score=float(score) if isinstance(score, (int, float)) and not isinstance(score, bool) else None,
                        flag=parse_bool(rec.get("flag", "")),
                        rank=int(rank) if isinstance(rank, (int, float)) and not isinstance(rank, bool) else None,
                        extra={c: parse_value(rec.get(c)) for c in extra},
                    ))
        rows.sort(key=_order_key)
        queue = cls(job_dir, rows, extra)
        queue._load_reviewed()
        return queue

    def _load_reviewed(self) -> None:
        path = self.job_dir / REVIEW_FILE
        if not path.exists():
            return
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return
        for case, info in (data.get("reviewed") or {}).items():
            row = self._by_case.get(case)
            if row is not None:
                row.reviewed = True
                row.reviewed_at = (info or {}).get("at")
                row.refined_path = (info or {}).get("refined")

    # -- queries

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def columns(self) -> list[str]:
        """Columns to show: rank, case, score, flag, reviewed, then the method's own columns."""
        return ["rank", "case", "score", "flag", "reviewed", *self.extra_columns]

    def row(self, case: str) -> ReviewRow | None:
        return self._by_case.get(case)

    def index(self, case: str | None) -> int | None:
        for i, r in enumerate(self.rows):
            if r.case == case:
                return i
        return None

    def cases(self) -> list[str]:
        return [r.case for r in self.rows]

    def counts(self) -> dict[str, int]:
        return {
            "cases": len(self.rows),
            "flagged": sum(r.flag for r in self.rows),
            "reviewed": sum(r.reviewed for r in self.rows),
            "flagged_left": sum(r.flag and not r.reviewed for r in self.rows),
        }

    def next_flagged(self, after: str | None = None, include_reviewed: bool = False) -> str | None:
        """The next flagged case after ``after`` in rank order, wrapping round; unreviewed ones only by default."""
        n = len(self.rows)
        if n == 0:
            return None
        start = self.index(after)
        start = -1 if start is None else start
        for k in range(1, n + 1):
            r = self.rows[(start + k) % n]
            if r.flag and (include_reviewed or not r.reviewed):
                return r.case  # k == n is ``after`` itself: the only one left
        return None

    # -- changes

    def mark_reviewed(self, case: str, refined_path: str | os.PathLike | None = None, reviewed: bool = True) -> None:
        """Mark ``case`` reviewed (or not) and save ``review.json`` atomically."""
        row = self._by_case.get(case)
        if row is None:
            raise KeyError(f"case {case!r} is not in {self.job_dir / QUALITY_FILE}")
        row.reviewed = reviewed
        row.reviewed_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) if reviewed else None
        row.refined_path = str(refined_path) if (reviewed and refined_path) else None
        self.save()

    def save(self) -> None:
        path = self.job_dir / REVIEW_FILE
        data: dict[str, Any] = {}
        if path.exists():  # keep marks of cases no longer in quality.csv and any other keys
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                data = {}
        reviewed = dict(data.get("reviewed") or {})
        for r in self.rows:
            if r.reviewed:
                reviewed[r.case] = {"at": r.reviewed_at, "refined": r.refined_path}
            else:
                reviewed.pop(r.case, None)
        data["reviewed"] = reviewed
        data["version"] = 1
        _atomic_write_json(path, data)


def _order_key(r: ReviewRow):
    # rank first (missing ranks last); then least trustworthy first; then name
    score = r.score if r.score is not None and not math.isnan(r.score) else math.inf
    return (r.rank is None, r.rank if r.rank is not None else 0, score, r.case)


# ---------------------------------------------------------------------------- map display

# Slicer colour tables (node ids); the first one present in the scene is used.
GREY_COLORS = ("vtkMRMLColorTableNodeGrey",)
DIVERGING_COLORS = ("vtkMRMLColorTableNodeFileDivergingBlueRed.txt", "vtkMRMLColorTableNodeFileColdToHotRainbow.txt")
FRACTION_COLORS = ("vtkMRMLColorTableNodeFileViridis.txt", "vtkMRMLColorTableNodeRainbow")
OTHER_COLORS = ("vtkMRMLColorTableNodeFileColdToHotRainbow.txt", "vtkMRMLColorTableNodeRainbow")


@dataclass
class MapDisplay:
    """How Slicer shows a per-pixel map over the image: colour tables to try in order, and
    the window and level (``None``: Slicer's automatic window/level)."""

    colors: tuple[str, ...]
    window: float | None = None
    level: float | None = None


def map_display(name: str, low: float, high: float) -> MapDisplay:
    """The display of map ``name`` whose values span ``low``…``high``, by the map's kind
    (``aeseg.quality.map_kinds.map_kind``, the rules the job report's overview follows too).

    An absence image is grey, so that the opacity slider fades between the image and its
    healthy-looking translation; a signed map (the additive residual) is diverging and
    centred on zero, red where the translation removed intensity and blue where it added
    it; a map within 0…1 (confidence, weights, probability) is ``viridis`` over 0…1;
    anything else keeps Slicer's automatic window/level.
    """
    kind = map_kind(name, low, high)
    if kind == "grey":
        return MapDisplay(GREY_COLORS)
    if kind == "diverging":
        m = max(abs(low), abs(high))
        return MapDisplay(DIVERGING_COLORS, window=2 * m if m > 0 else 1.0, level=0.0)
    if kind == "fraction":
        return MapDisplay(FRACTION_COLORS, window=1.0, level=0.5)
    return MapDisplay(OTHER_COLORS)


# ---------------------------------------------------------------------------- case files


@dataclass
class CaseFiles:
    """Everything Slicer loads for one case of a job (paths that do not exist are None)."""

    case: str
    image: str | None = None
    label: str | None = None  # the given label (clean or noisy)
    label_kind: str | None = None
    label_value: int | None = None
    pseudo_label: str | None = None
    correction: str | None = None
    refined: str | None = None
    maps: dict[str, str] = field(default_factory=dict)


def read_job_json(job_dir: str | os.PathLike) -> dict:
    path = Path(job_dir) / "job.json"
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _find_case_file(folder: Path, case: str) -> str | None:
    if not folder.is_dir():
        return None
    for suffix in IMAGE_SUFFIXES:
        p = folder / f"{case}{suffix}"
        if p.exists():
            return str(p)
    d = folder / case
    if d.is_dir():  # a DICOM series folder
        return str(d)
    return None


def _abs(cohort: Path | None, p: Any) -> str | None:
    if not p:
        return None
    path = Path(str(p))
    if not path.is_absolute() and cohort is not None:
        path = cohort / path
    return str(path)


def case_files(job_dir: str | os.PathLike | None, case: str, cohort: str | os.PathLike | None = None,
               cohort_cases: Iterable[dict] | None = None) -> CaseFiles:
    """Find a case's image, given label, job outputs and refined label.

    The image and the given label come from ``cohort_cases`` (the ``cases`` list of
    ``aeseg validate --json``) when given, otherwise from the cohort's folders
    (``images/``, ``labels/``, ``noisy_labels/``). The cohort is ``cohort`` or the one in
    ``JOB/job.json``.
    """
    job = Path(job_dir) if job_dir else None
    if cohort is None and job is not None:
        cohort = read_job_json(job).get("cohort")
    cohort_path = Path(cohort) if cohort else None
    files = CaseFiles(case)
    entry = None
    for c in cohort_cases or ():
        if c.get("case") == case:
            entry = c
            break
    if entry is not None:
        files.image = _abs(cohort_path, entry.get("image"))
        files.label = _abs(cohort_path, entry.get("label"))
        files.label_kind = entry.get("label_kind")
        lv = entry.get("label_value")
        files.label_value = int(lv) if isinstance(lv, (int, float)) and not isinstance(lv, bool) else None
    elif cohort_path is not None:
        files.image = _find_case_file(cohort_path / "images", case)
        clean = _find_case_file(cohort_path / "labels", case)
        noisy = _find_case_file(cohort_path / "noisy_labels", case)
        files.label = clean or noisy
        files.label_kind = "clean" if clean else ("noisy" if noisy else "none")
    if cohort_path is not None:
        ref = cohort_path / "refined" / f"{case}.seg.nrrd"
        files.refined = str(ref) if ref.exists() else None
    if job is not None:
        p = job / "pseudo_labels" / f"{case}.seg.nrrd"
        files.pseudo_label = str(p) if p.exists() else None
        c = job / "corrections" / f"{case}.seg.nrrd"
        files.correction = str(c) if c.exists() else None
        mdir = job / "maps" / case
        if mdir.is_dir():
            for m in sorted(mdir.iterdir()):
                if m.name.endswith(".nrrd") and not m.name.startswith("."):
                    files.maps[m.name[: -len(".nrrd")]] = str(m)
    for attr in ("image", "label"):
        v = getattr(files, attr)
        if v and not Path(v).exists():
            setattr(files, attr, None)
    return files
