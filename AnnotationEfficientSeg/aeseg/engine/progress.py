"""Reading a job's ``events.jsonl`` while it grows, and the progress it describes
(standard library only: the Slicer module reads it through ``AnnotationEfficientSegLib.events``,
and ``aeseg status`` prints it).

:class:`EventTail` remembers how far it has read and returns only complete new lines;
a last line still being written is kept until its newline arrives (or until the caller
says the run is over). :class:`ProgressState` folds events into what the panel shows:
status, epoch, step, losses, validation metrics, ETA and artifacts.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..io.values import number

EVENTS_FILE = "events.jsonl"

IDLE, RUNNING, DONE, ERROR, CANCELLED = "idle", "running", "done", "error", "cancelled"
FINISHED = (DONE, ERROR, CANCELLED)
_NOT_METRICS = ("type", "epoch", "epochs", "step", "steps", "losses", "time", "phase", "eta_s")


class EventTail:
    """Incremental reader of a JSON-lines file that another process appends to."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._offset = 0
        self._pending = b""
        self._inode: tuple[int, int] | None = None
        self.bad_lines = 0

    def reset(self) -> None:
        self._offset = 0
        self._pending = b""
        self._inode = None

    def read_new(self, final: bool = False) -> list[dict]:
        """Events appended since the last call. ``final=True`` also parses an unterminated last line."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return []
        ident = (st.st_dev, st.st_ino)
        if self._inode is not None and (ident != self._inode or st.st_size < self._offset):
            # the file was replaced or truncated: start again from its beginning
            self.reset()
        self._inode = ident
        if st.st_size > self._offset:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read(st.st_size - self._offset)
            self._offset += len(chunk)
            self._pending += chunk
        lines = self._pending.split(b"\n")
        self._pending = lines.pop()  # b"" when the data ended with a newline
        if final and self._pending.strip():
            lines.append(self._pending)
            self._pending = b""
        events = []
        for raw in lines:
            raw = raw.strip()
            if not raw:
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                self.bad_lines += 1
                continue
            if isinstance(obj, dict):
                events.append(obj)
            else:
                self.bad_lines += 1
        return events


def format_duration(seconds: float | None) -> str:
    """``812`` → ``13 min 32 s``; ``4000`` → ``1 h 06 min``; None → ``–``."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "–"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    if h < 48:
        return f"{h} h {m:02d} min"
    d, h = divmod(h, 24)
    return f"{d} d {h:02d} h"


@dataclass
class ProgressState:
    """What a run has reported so far. Feed it events with :meth:`apply`."""

    status: str = IDLE
    epoch: int | None = None
    epochs: int | None = None
    step: int | None = None
    steps: int | None = None
    phase: str | None = None
    losses: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # from the last "epoch" event
    eta_s: float | None = None
    message: str = ""
    history: list[dict] = field(default_factory=list)  # one entry per "epoch" event
    artifacts: list[dict] = field(default_factory=list)
    starts: int = 0  # a resumed job appends another "start"
    events_seen: int = 0
    _eta_at: float | None = None  # monotonic time when eta_s was reported
    _first_progress: tuple[float, float] | None = None  # (monotonic time, fraction)

    def apply(self, event: dict, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.events_seen += 1
        kind = event.get("type")
        if kind == "start":
            self.starts += 1
            self.status = RUNNING
            self.message = ""
            self.eta_s = None
            self._first_progress = None
            if event.get("epochs") is not None:
                self.epochs = int(event["epochs"])
        elif kind == "progress":
            self.status = RUNNING  # progress after an end means the job was resumed
            self._update_counters(event)
            losses = event.get("losses")
            if isinstance(losses, dict):
                self.losses = {str(k): v for k, v in ((k, number(v)) for k, v in losses.items()) if v is not None}
            eta = number(event.get("eta_s"))
            self.eta_s = eta
            self._eta_at = now if eta is not None else None
            frac = self.fraction
            if frac is not None and self._first_progress is None:
                self._first_progress = (now, frac)
        elif kind == "epoch":
            if self.status == IDLE:
                self.status = RUNNING
            self._update_counters(event)
            metrics = {k: number(v) for k, v in event.items() if k not in _NOT_METRICS}
            self.metrics = {k: v for k, v in metrics.items() if v is not None}
            losses = event.get("losses") if isinstance(event.get("losses"), dict) else {}
            entry = {"epoch": self.epoch, **self.metrics}
            entry.update({f"loss:{k}": number(v) for k, v in losses.items() if number(v) is not None})
            self.history.append(entry)
            if self.epochs and self.epoch is not None and self.steps:
                self.step = self.steps
        elif kind == "artifact":
            self.artifacts.append({"path": event.get("path"), "kind": event.get("kind")})
        elif kind == "done":
            self.status = DONE
            self.eta_s = 0.0
            self.message = str(event.get("message", "") or "")
        elif kind == "error":
            self.status = ERROR
            self.message = str(event.get("message", "unknown error"))
        elif kind == "cancelled":
            self.status = CANCELLED
            self.message = str(event.get("message", "") or "")

    def _update_counters(self, event: dict) -> None:
        for key in ("epoch", "epochs", "step", "steps"):
            v = number(event.get(key))
            if v is not None:
                setattr(self, key, int(v))
        if event.get("phase"):
            self.phase = str(event["phase"])

    def apply_all(self, events: list[dict]) -> None:
        for e in events:
            self.apply(e)

    def process_exited(self, code: int, stderr_tail: str = "") -> None:
        """The process ended: a run that never reported its end failed (or finished if code is 0)."""
        if self.status in FINISHED:
            return
        if code == 0:
            self.status = DONE
        else:
            self.status = ERROR
            detail = stderr_tail.strip().splitlines()[-1] if stderr_tail.strip() else ""
            self.message = f"the process exited with code {code}" + (f": {detail}" if detail else "")

    # -- derived values

    @property
    def fraction(self) -> float | None:
        """Progress 0–1 (``epoch`` counts from 1; within an epoch, ``step/steps``)."""
        if self.status == DONE:
            return 1.0
        if not self.epochs or self.epoch is None:
            return None
        within = 0.0
        if self.steps and self.step is not None:
            within = min(max(self.step / self.steps, 0.0), 1.0)
        done_epochs = max(self.epoch - 1, 0)
        return min(max((done_epochs + within) / self.epochs, 0.0), 1.0)

    def eta_now(self, now: float | None = None) -> float | None:
        """Seconds left: the run's own estimate counted down, else a linear estimate from progress so far."""
        now = time.monotonic() if now is None else now
        if self.status in FINISHED:
            return 0.0 if self.status == DONE else None
        if self.eta_s is not None and self._eta_at is not None:
            return max(self.eta_s - (now - self._eta_at), 0.0)
        frac = self.fraction
        if frac is None or self._first_progress is None:
            return None
        t0, f0 = self._first_progress
        if frac <= f0 or now <= t0:
            return None
        rate = (frac - f0) / (now - t0)
        return (1.0 - frac) / rate if rate > 0 else None

    def losses_text(self, digits: int = 4) -> str:
        return ", ".join(f"{k} {v:.{digits}g}" for k, v in self.losses.items())

    def summary(self, now: float | None = None) -> str:
        """One line: ``Epoch 3/100 · step 40/120 · loss 0.41 · ETA 13 min 32 s``."""
        if self.status == IDLE:
            return "Not started"
        parts = []
        if self.epoch is not None:
            parts.append(f"Epoch {self.epoch}/{self.epochs}" if self.epochs else f"Epoch {self.epoch}")
        if self.step is not None and self.steps and self.status == RUNNING:
            parts.append(f"step {self.step}/{self.steps}")
        if self.phase and self.status == RUNNING:
            parts.append(self.phase)
        if self.losses:
            parts.append(self.losses_text())
        if "val_dice" in self.metrics:
            parts.append(f"val Dice {self.metrics['val_dice']:.3f}")
        if self.status == RUNNING:
            parts.append(f"ETA {format_duration(self.eta_now(now))}")
        head = {RUNNING: "", DONE: "Finished", ERROR: "Failed", CANCELLED: "Cancelled"}[self.status]
        text = " · ".join(parts)
        if head:
            text = head + (f" — {text}" if text else "")
        if self.status == ERROR and self.message:
            text += f": {self.message}"
        return text

    def artifact_paths(self, kind: str) -> list[str]:
        return [a["path"] for a in self.artifacts if a.get("kind") == kind and a.get("path")]


class JobWatcher:
    """An :class:`EventTail` and a :class:`ProgressState` for one job folder."""

    def __init__(self, job_dir: str | os.PathLike) -> None:
        self.job_dir = Path(job_dir)
        self.tail = EventTail(self.job_dir / EVENTS_FILE)
        self.state = ProgressState()

    def update(self, final: bool = False) -> list[dict]:
        """Read what is new, fold it into the state and return the new events."""
        events = self.tail.read_new(final=final)
        self.state.apply_all(events)
        return events


def read_job_state(job_dir: str | os.PathLike) -> ProgressState:
    """The state of a job from its whole events file (a finished, old or running job)."""
    w = JobWatcher(job_dir)
    w.update(final=False)
    return w.state
