"""``aeseg validate``: read every file of a cohort and report each problem with the file
and a fix, plus a summary and which methods the cohort supports. Nothing is written."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import CohortError
from .manifest import Cohort, Problem, load_cohort
from .reading import Geometry, read_image, read_label
from .summary import CohortSummary, summarize


@dataclass
class ValidationReport:
    cohort: Cohort
    problems: list[Problem]
    geometries: dict[str, Geometry] = field(default_factory=dict)
    channels: dict[str, int] = field(default_factory=dict)
    methods: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(p.severity == "error" for p in self.problems)

    @property
    def summary(self) -> dict[str, Any]:
        co = self.cohort
        dims = {g.ndim for g in self.geometries.values()}
        return {
            "cases": len(co.cases),
            "splits": dict(Counter(c.split for c in co.cases)),
            "label_kinds": {k: sum(c.label_kind == k for c in co.cases) for k in ("clean", "noisy", "none")},
            "presence": {k: sum(c.presence == k for c in co.cases) for k in ("present", "absent")},
            "domains": dict(Counter(c.domain for c in co.cases if c.domain)),
            "aux_masks": len(co.aux_masks),
            "refined": sum(c.refined for c in co.cases),
            "dims": "2D" if dims == {2} else "3D" if dims == {3} else "mixed" if dims else "none",
            "channels": sorted(set(self.channels.values())),
            "sizes": _ranges([g.size for g in self.geometries.values()]),
            "spacings": _ranges([g.spacing for g in self.geometries.values()]),
        }

    def to_dict(self) -> dict[str, Any]:
        return {"cohort": str(self.cohort.root), "ok": self.ok, "summary": self.summary,
                "cases": [c.to_dict() for c in self.cohort.cases],
                "problems": [p.to_dict() for p in self.problems], "methods": self.methods}


def _ranges(vals: list[tuple]) -> list:
    if not vals:
        return []
    a = np.asarray(vals, dtype=float)
    return [[round(float(lo), 4), round(float(hi), 4)] for lo, hi in zip(a.min(0), a.max(0))]


def validate_cohort(path: str | os.PathLike, check_methods: bool = True) -> ValidationReport:
    cohort = load_cohort(path)
    problems = list(cohort.problems)
    rep = ValidationReport(cohort, problems)
    for c in cohort.cases:
        try:
            img = read_image(c.image)
        except CohortError as e:
            problems.append(_problem_from(e, str(c.image)))
            continue
        rep.geometries[c.case_id] = img.geometry
        rep.channels[c.case_id] = img.channels
        if not np.all(np.isfinite(img.array)):
            n = int((~np.isfinite(img.array)).sum())
            problems.append(Problem(str(c.image), f"{n} NaN/Inf voxels", "replace them (e.g. by the minimum intensity) or remove the case"))
        lv = c.label_value
        for kind, lab in (("label", c.clean_label), ("noisy label", c.noisy_label), ("truth", c.truth)):
            if lab is None:
                continue
            try:
                arr, geom = read_label(lab, lv)
            except CohortError as e:
                problems.append(_problem_from(e, str(lab)))
                continue
            if not geom.same_grid(img.geometry):
                problems.append(Problem(str(lab), f"{kind} geometry differs from its image ({img.geometry.describe_difference(geom)})",
                                        "resample the label onto the image grid (e.g. in Slicer: Resample Scalar/Vector/DWI Volume, or SimpleITK Resample with nearest neighbour)"))
            elif not arr.any() and c.presence != "absent" and kind != "truth":
                what = f"label value {lv}" if lv is not None else "foreground"
                problems.append(Problem(str(lab), f"empty {kind}: no {what} voxels",
                                        "draw the structure, set the right label_value, or mark the case label_kind none"))
    if len(set(rep.channels.values())) > 1:
        counts = Counter(rep.channels.values())
        problems.append(Problem(str(cohort.root), f"images mix channel counts {dict(counts)}",
                                "convert all images to grey (or all to RGB)"))
    for p in cohort.aux_masks:
        try:
            arr, _ = read_label(p)
            if not arr.any():
                problems.append(Problem(str(p), "empty auxiliary mask", "remove it from aux_masks/", severity="warning"))
        except CohortError as e:
            problems.append(_problem_from(e, str(p)))
    if check_methods:
        rep.methods = method_support(summarize(cohort))
    return rep


def _problem_from(e: CohortError, file: str) -> Problem:
    msg = str(e)
    if msg.startswith(file + ": "):
        msg = msg[len(file) + 2:]
    fix = "check the path in cohort.csv or add the file" if "not found" in msg else \
        "split the 4D image into one 3D volume per case" if "4D" in msg else \
        "re-export the file from the scanner or viewer"
    if "(fix:" not in msg and ";" in msg:
        msg, fix = msg.split(";", 1)
    return Problem(file, msg.strip(), fix.strip())


def method_support(summary: CohortSummary) -> list[dict[str, Any]]:
    from ..methods.registry import all_methods

    out = []
    for name, cls in all_methods().items():
        reason = cls.unsupported_reason(summary, None)
        out.append({"name": name, "title": cls.title, "supported": reason is None, "reason": reason or ""})
    return out


def format_report(rep: ValidationReport) -> str:
    s = rep.summary
    lines = [f"Cohort {rep.cohort.root}" + (" (cohort.csv)" if rep.cohort.from_csv else " (discovered from folders)"),
             f"  cases: {s['cases']}  splits: {', '.join(f'{k} {v}' for k, v in sorted(s['splits'].items()))}",
             f"  labels: clean {s['label_kinds']['clean']}, noisy {s['label_kinds']['noisy']}, none {s['label_kinds']['none']}"
             + (f"  (refined {s['refined']})" if s["refined"] else ""),
             f"  images: {s['dims']}, channels {s['channels']}, sizes {s['sizes']}, spacings (mm) {s['spacings']}"]
    if any(s["presence"].values()):
        lines.append(f"  presence tags: present {s['presence']['present']}, absent {s['presence']['absent']}")
    if s["domains"]:
        lines.append(f"  domains: {s['domains']}")
    lines.append(f"  auxiliary masks: {s['aux_masks']}")
    if rep.methods:
        lines.append("Methods:")
        for m in rep.methods:
            lines.append(f"  {'yes' if m['supported'] else 'no '}  {m['name']:<18} {m['reason']}")
    if rep.problems:
        lines.append(f"Problems ({len(rep.problems)}):")
        lines.extend(f"  {p}" for p in rep.problems)
    else:
        lines.append("No problems found.")
    return "\n".join(lines)
