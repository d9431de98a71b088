"""The job folder: one training run, everything Slicer shows comes from here.

::

    job/
      job.json          resolved config, method, cohort, seed, device, versions
      events.jsonl      progress, metrics, artifacts, done / error / cancelled
      checkpoints/      last.pt, best.pt (torch.load(..., weights_only=True))
      model/            model.pt + model.json
      pseudo_labels/<case>.seg.nrrd
      corrections/<case>.seg.nrrd
      maps/<case>/<name>.nrrd
      quality.csv
      report/           loss_curves.png, overview.png, report.html
      cancel            (created by a user or the Slicer module to stop the run)
"""

from __future__ import annotations

import io
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import JobError
from ..io.atomic import write_bytes, write_json
from .events import EventLog, MirroredEventLog


@dataclass
class JobFolder:
    root: Path
    writer: bool = True  # False on DDP ranks other than 0: they write nothing
    parent: "JobFolder | None" = None  # set for sub-jobs (task standardization)

    def __post_init__(self):
        self.root = Path(self.root)
        if self.parent is None:
            self.events = EventLog(self.root / "events.jsonl", enabled=self.writer)
        else:
            self.events = MirroredEventLog(self.root / "events.jsonl", self.parent.events, self.root.name, enabled=self.writer)

    # paths --------------------------------------------------------------------------
    @property
    def job_json(self) -> Path:
        return self.root / "job.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    @property
    def cancel_file(self) -> Path:
        """A sub-job stops when its parent is asked to."""
        return self.parent.cancel_file if self.parent is not None else self.root / "cancel"

    def pseudo_label(self, case: str) -> Path:
        return self.root / "pseudo_labels" / f"{case}.seg.nrrd"

    def correction(self, case: str) -> Path:
        return self.root / "corrections" / f"{case}.seg.nrrd"

    def map_path(self, case: str, name: str) -> Path:
        return self.root / "maps" / case / f"{name}.nrrd"

    @property
    def quality_csv(self) -> Path:
        return self.root / "quality.csv"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    def rel(self, p: Path) -> str:
        return str(Path(p).relative_to(self.root))

    # lifecycle ----------------------------------------------------------------------
    def create(self, meta: dict[str, Any]) -> None:
        if self.root.exists() and any(self.root.iterdir()):
            raise JobError(f"{self.root}: job folder exists and is not empty; choose a new --out or use --resume {self.root}")
        if self.writer:
            self.root.mkdir(parents=True, exist_ok=True)
            write_json(self.job_json, meta)

    def read_meta(self) -> dict[str, Any]:
        if not self.job_json.is_file():
            raise JobError(f"{self.root}: not a job folder (no job.json)")
        try:
            return json.loads(self.job_json.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise JobError(f"{self.job_json}: unreadable ({e})") from None

    def cancel_requested(self) -> bool:
        return self.cancel_file.exists()

    def clear_cancel(self) -> None:
        if self.writer and self.cancel_file.exists():
            self.cancel_file.unlink()

    # checkpoints --------------------------------------------------------------------
    def save_checkpoint(self, name: str, state: dict[str, Any]) -> Path:
        path = self.checkpoints / f"{name}.pt"
        if self.writer:
            buf = io.BytesIO()
            torch.save(state, buf)
            write_bytes(path, buf.getvalue())
        return path

    def load_checkpoint(self, name: str = "last") -> dict[str, Any]:
        path = self.checkpoints / f"{name}.pt"
        if not path.is_file():
            raise JobError(f"{path}: no checkpoint to resume from (the job stopped before its first save)")
        return torch.load(path, map_location="cpu", weights_only=True)


def versions() -> dict[str, str]:
    import monai
    import numpy
    import SimpleITK

    from .. import __version__

    return {"aeseg": __version__, "torch": torch.__version__, "monai": monai.__version__,
            "numpy": numpy.__version__, "SimpleITK": SimpleITK.Version.VersionString(),
            "python": platform.python_version(), "platform": platform.platform()}


def validate_job_path(path: str | os.PathLike) -> Path:
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise JobError(f"{p}: exists and is not a folder")
    return p.resolve()
