"""The cohort manifest: which cases exist, which files hold their image and labels,
and the role of each label.

A cohort is a folder (see README, "Cohort folder")::

    cohort/
      images/<case>.*  or images/<case>/ (DICOM series)  or images/{present,absent}/<case>.*
      labels/<case>.*          clean (expert) labels
      noisy_labels/<case>.*    imperfect labels
      refined/<case>.seg.nrrd  labels a person accepted in Slicer, or fixed elsewhere in any
                               label format (count as clean, with or without cohort.csv)
      aux_masks/*              unpaired auxiliary masks
      truth/<case>.*           evaluation-only true labels (phantoms, benchmarks)
      cohort.csv               optional: case,image,label,label_kind,presence,domain,split[,label_value]

With ``cohort.csv`` the CSV is the manifest (paths relative to the cohort folder);
without it the manifest is discovered from the folders. Discovery never raises for a
single bad file: it records a :class:`Problem` so that ``aeseg validate`` can list them all.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CohortError
from .reading import image_suffix, strip_suffix

LABEL_KINDS = ("clean", "noisy", "none")
PRESENCE = ("present", "absent")
SPLITS = ("train", "val", "test")
CSV_COLUMNS = ("case", "image", "label", "label_kind", "presence", "domain", "split", "label_value")


@dataclass
class Problem:
    """One thing wrong with a cohort: the file concerned, what is wrong and how to fix it."""

    file: str
    message: str
    fix: str
    severity: str = "error"  # "error" stops training; "warning" does not

    def __str__(self) -> str:
        return f"{self.severity}: {self.file}: {self.message} (fix: {self.fix})"

    def to_dict(self) -> dict:
        return {"file": self.file, "message": self.message, "fix": self.fix, "severity": self.severity}


@dataclass
class Case:
    case_id: str
    image: Path
    clean_label: Path | None = None
    noisy_label: Path | None = None
    presence: str | None = None
    domain: str | None = None
    split: str = "train"
    label_value: int | None = None
    truth: Path | None = None
    refined: bool = False  # clean_label comes from cohort/refined/

    @property
    def label_kind(self) -> str:
        if self.clean_label is not None:
            return "clean"
        if self.noisy_label is not None:
            return "noisy"
        return "none"

    @property
    def label(self) -> Path | None:
        """The label a method trains with: the clean one if there is one, else the noisy one."""
        return self.clean_label or self.noisy_label

    def to_dict(self) -> dict:
        return {
            "case": self.case_id,
            "image": str(self.image),
            "label": str(self.label) if self.label else None,
            "label_kind": self.label_kind,
            "presence": self.presence,
            "domain": self.domain,
            "split": self.split,
            "label_value": self.label_value,
            "refined": self.refined,
        }


@dataclass
class Cohort:
    root: Path
    cases: list[Case]
    aux_masks: list[Path] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    from_csv: bool = False

    def __len__(self) -> int:
        return len(self.cases)

    def case(self, case_id: str) -> Case:
        for c in self.cases:
            if c.case_id == case_id:
                return c
        raise CohortError(f"no case '{case_id}' in cohort {self.root}")

    def split(self, name: str) -> list[Case]:
        return [c for c in self.cases if c.split == name]

    def count(self, kind: str, split: str | None = None) -> int:
        return sum(1 for c in self.cases if c.label_kind == kind and (split is None or c.split == split))

    def with_labels(self, overrides: dict[str, Path], kind: str = "noisy") -> "Cohort":
        """A copy whose cases in ``overrides`` train with the given label files.

        Used by task standardization: pseudo labels stored in a job folder become the
        ``noisy`` labels of unlabelled cases without touching the cohort folder.
        """
        cases = []
        for c in self.cases:
            c2 = Case(**{k: getattr(c, k) for k in c.__dataclass_fields__})
            if c.case_id in overrides and c.clean_label is None:
                c2.label_value = 1  # pseudo-label files hold the target as label value 1
                if kind == "noisy":
                    c2.noisy_label = Path(overrides[c.case_id])
                else:
                    c2.clean_label = Path(overrides[c.case_id])
            cases.append(c2)
        return Cohort(self.root, cases, list(self.aux_masks), list(self.problems), self.from_csv)


def _is_image(p: Path) -> bool:
    return p.is_file() and not p.name.startswith(".") and image_suffix(p) is not None


def _is_dicom_dir(p: Path) -> bool:
    if not p.is_dir():
        return False
    files = [f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")]
    return bool(files) and all(image_suffix(f) in (".dcm", None) for f in files)


def _index(folder: Path, problems: list[Problem], what: str) -> dict[str, Path]:
    """case id → file for every image file (or DICOM folder) directly in ``folder``."""
    out: dict[str, Path] = {}
    if not folder.is_dir():
        return out
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if _is_image(p):
            cid = strip_suffix(p)
        elif _is_dicom_dir(p):
            cid = p.name
        else:
            continue
        if cid in out:
            problems.append(Problem(str(p), f"duplicate case id '{cid}' in {what} (also {out[cid].name})",
                                    "keep one file per case id (remove or rename the other)"))
            continue
        out[cid] = p
    return out


def discover(root: Path) -> Cohort:
    """Build the manifest from the standard folders."""
    problems: list[Problem] = []
    img_dir = root / "images"
    if not img_dir.is_dir():
        raise CohortError(f"{root}: no images/ folder and no cohort.csv; put the images in {root}/images/")
    images = _index(img_dir, problems, "images/")
    presence: dict[str, str] = {}
    for tag in PRESENCE:
        sub = img_dir / tag
        if sub.is_dir() and not _is_dicom_dir(sub):
            for cid, p in _index(sub, problems, f"images/{tag}/").items():
                if cid in images:
                    problems.append(Problem(str(p), f"duplicate case id '{cid}' (also {images[cid]})",
                                            "keep one file per case id"))
                    continue
                images[cid] = p
                presence[cid] = tag
    clean = _index(root / "labels", problems, "labels/")
    noisy = _index(root / "noisy_labels", problems, "noisy_labels/")
    refined = _index(root / "refined", problems, "refined/")
    truth = _index(root / "truth", problems, "truth/")
    for name, idx in (("labels", clean), ("noisy_labels", noisy), ("refined", refined)):
        for cid, p in idx.items():
            if cid not in images:
                problems.append(Problem(str(p), f"label without image: no images/{cid}.* for this {name}/ file",
                                        f"add the image as images/{cid}.<ext> or remove the label"))
    cases = []
    for cid in sorted(images):
        c = Case(cid, images[cid], clean_label=clean.get(cid), noisy_label=noisy.get(cid),
                 presence=presence.get(cid), truth=truth.get(cid))
        if cid in refined:
            c.clean_label, c.refined = refined[cid], True
        cases.append(c)
    if not cases and not problems:
        problems.append(Problem(str(img_dir), "no images found", "add images (.nii.gz, .nrrd, .mha, .png, DICOM folders)"))
    return Cohort(root, cases, _aux(root), problems, from_csv=False)


def _aux(root: Path) -> list[Path]:
    d = root / "aux_masks"
    if not d.is_dir():
        return []
    return sorted(p for p in d.rglob("*") if _is_image(p))


def _resolve(root: Path, value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else root / p


def read_csv(root: Path) -> Cohort:
    """Build the manifest from ``cohort.csv``; bad rows become problems, not exceptions."""
    path = root / "cohort.csv"
    problems: list[Problem] = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        if "case" not in cols or "image" not in cols:
            raise CohortError(f"{path}: needs at least the columns 'case' and 'image' (has: {', '.join(cols) or 'none'})")
        unknown = [c for c in cols if c not in CSV_COLUMNS]
        for c in unknown:
            problems.append(Problem(str(path), f"unknown column '{c}' (ignored)",
                                    f"use only: {', '.join(CSV_COLUMNS)}", severity="warning"))
        rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in reader]
    seen: dict[str, int] = {}
    cases: list[Case] = []
    refined = _index(root / "refined", problems, "refined/")  # any label format, as without the CSV
    truth = _index(root / "truth", problems, "truth/")
    for i, r in enumerate(rows, start=2):
        where = f"{path}:{i}"
        cid = r.get("case", "")
        if not cid:
            problems.append(Problem(where, "row without a case id", "fill the 'case' column"))
            continue
        if cid in seen:
            problems.append(Problem(where, f"duplicate case id '{cid}' (also line {seen[cid]})", "give every row its own case id"))
            continue
        seen[cid] = i
        if not r.get("image"):
            problems.append(Problem(where, f"case '{cid}' has a label but no image" if r.get("label") else f"case '{cid}' has no image",
                                    "fill the 'image' column with a path relative to the cohort folder"))
            continue
        kind = (r.get("label_kind") or "").lower()
        label = r.get("label") or ""
        if kind and kind not in LABEL_KINDS:
            problems.append(Problem(where, f"unknown label_kind '{kind}' for case '{cid}'",
                                    f"use one of: {', '.join(LABEL_KINDS)}"))
            continue
        if not kind:
            kind = "clean" if label else "none"
        if kind != "none" and not label:
            problems.append(Problem(where, f"label_kind '{kind}' but no label file for case '{cid}'",
                                    "fill the 'label' column or set label_kind to none"))
            continue
        presence = (r.get("presence") or "").lower() or None
        if presence and presence not in PRESENCE:
            problems.append(Problem(where, f"unknown presence tag '{presence}' for case '{cid}'", "use present or absent"))
            presence = None
        split = (r.get("split") or "train").lower()
        if split not in SPLITS:
            problems.append(Problem(where, f"unknown split '{split}' for case '{cid}'", f"use one of: {', '.join(SPLITS)}"))
            split = "train"
        lv = r.get("label_value") or ""
        try:
            label_value = int(lv) if lv else None
        except ValueError:
            problems.append(Problem(where, f"label_value '{lv}' is not an integer", "write the label's integer value"))
            label_value = None
        c = Case(cid, _resolve(root, r["image"]), presence=presence, domain=r.get("domain") or None,
                 split=split, label_value=label_value)
        if kind == "clean":
            c.clean_label = _resolve(root, label)
        elif kind == "noisy":
            c.noisy_label = _resolve(root, label)
        c.truth = truth.get(cid)
        if cid in refined:
            c.clean_label, c.refined = refined[cid], True
        cases.append(c)
    for cid in sorted(set(refined) - set(seen)):
        problems.append(Problem(str(refined[cid]), f"refined label for case '{cid}', which {path.name} does not list",
                                f"add a row for '{cid}' to {path.name} or remove the file"))
    return Cohort(root, cases, _aux(root), problems, from_csv=True)


def validate_root(path: str | os.PathLike) -> Path:
    """A user-given cohort path: must exist and be a folder."""
    root = Path(path).expanduser()
    if not root.exists():
        raise CohortError(f"{root}: cohort folder not found")
    if not root.is_dir():
        raise CohortError(f"{root}: not a folder; give the cohort folder (with images/ or cohort.csv)")
    return root.resolve()


def load_cohort(path: str | os.PathLike) -> Cohort:
    """Load a cohort from ``cohort.csv`` when present, else by discovery."""
    root = validate_root(path)
    if (root / "cohort.csv").is_file():
        return read_csv(root)
    return discover(root)


def write_csv(cohort: Cohort, path: str | os.PathLike) -> None:
    """Write the manifest as ``cohort.csv`` (paths relative to the cohort folder when inside it)."""
    from ..io.atomic import write_text
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for c in cohort.cases:
        lab = c.label
        w.writerow([c.case_id, _rel(c.image, cohort.root), _rel(lab, cohort.root) if lab else "", c.label_kind,
                    c.presence or "", c.domain or "", c.split, "" if c.label_value is None else c.label_value])
    write_text(path, buf.getvalue())


def _rel(p: Path, root: Path) -> str:
    try:
        return str(Path(p).resolve().relative_to(root.resolve()))
    except ValueError:
        return str(p)
