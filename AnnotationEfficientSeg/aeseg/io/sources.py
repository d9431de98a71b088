"""Where labels to export come from: a cohort's ``refined/`` folder, or a job's
``corrections/`` or ``pseudo_labels/``."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..cohort.manifest import load_cohort
from ..cohort.reading import strip_suffix
from ..errors import AesegError
from .export import ExportItem


def export_items(source: str | os.PathLike, labels: str | None, cases: list[str] | None,
                 need_images: bool = False) -> list[ExportItem]:
    src = Path(source).expanduser().resolve()
    if not src.is_dir():
        raise AesegError(f"{src}: not a folder; give a job folder or a cohort folder")
    is_job = (src / "job.json").is_file()
    if is_job:
        labels = labels or ("corrections" if (src / "corrections").is_dir() else "pseudo_labels")
        if labels == "refined":
            raise AesegError("refined labels live in the cohort folder; give the cohort folder as SOURCE")
        folder = src / labels
        cohort = load_cohort(json.loads((src / "job.json").read_text())["cohort"])
    else:
        labels = labels or "refined"
        if labels != "refined":
            raise AesegError(f"{src} is a cohort folder: only --labels refined can be exported from it")
        folder = src / "refined"
        cohort = load_cohort(src)
    if not folder.is_dir():
        raise AesegError(f"{folder}: no such folder (nothing to export)")
    files = {strip_suffix(p): p for p in sorted(folder.iterdir()) if p.is_file() and p.name.endswith(".seg.nrrd")}
    if cases:
        missing = [c for c in cases if c not in files]
        if missing:
            raise AesegError(f"no {labels} label for case(s): {', '.join(missing)}")
        files = {c: files[c] for c in cases}
    if not files:
        raise AesegError(f"{folder}: holds no .seg.nrrd labels")
    images = {c.case_id: c.image for c in cohort.cases}
    return [ExportItem(cid, p, images.get(cid)) for cid, p in files.items()]
