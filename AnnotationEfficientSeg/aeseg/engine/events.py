"""``events.jsonl``: one JSON object a line, appended and flushed as they happen.

Types: ``start``, ``progress`` (epoch, epochs, step, steps, losses, eta_s, phase),
``epoch`` (end-of-epoch metrics), ``artifact`` (path relative to the job, kind),
``done``, ``error`` (message), ``cancelled``, ``resumed`` (phase, epoch, step), ``note``
(message: something the user should know, e.g. task standardization or a figure not
drawn) and the methods' own (e.g. ``correction`` from ``aide``). Readers must tolerate a partial last line
while the job runs (:func:`read_events` does).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable


class EventLog:
    """Appends events to ``path``. ``echo``, when set, is called with every event written
    (the command line prints the ``note`` events with it)."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        self.echo: Callable[[dict], None] | None = None

    def emit(self, type_: str, **fields: Any) -> dict:
        ev = {"type": type_, "time": round(time.time(), 3), **fields}
        if self.enabled:
            line = json.dumps(ev, default=_clean, allow_nan=False) + "\n"
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
            if self.echo is not None:
                self.echo(ev)
        return ev


def _clean(o: Any) -> Any:
    try:
        return float(o)
    except (TypeError, ValueError):
        return str(o)


def sanitize(d: dict[str, Any]) -> dict[str, Any]:
    """Round floats, drop NaN/Inf (JSON has no NaN)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, float):
            if math.isfinite(v):
                out[k] = round(v, 6)
        else:
            out[k] = v
    return out


def read_events(path: str | os.PathLike) -> list[dict]:
    """All complete events in ``path`` (a partial last line is skipped)."""
    p = Path(path)
    if not p.exists():
        return []
    out = []
    for line in p.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


class MirroredEventLog(EventLog):
    """The event log of a sub-job (task standardization) that also shows its progress in
    the parent job's log, with the phase name prefixed, so the UI keeps moving."""

    def __init__(self, path: Path, parent: EventLog, prefix: str, enabled: bool = True):
        super().__init__(path, enabled)
        self.parent = parent
        self.prefix = prefix

    def emit(self, type_: str, **fields: Any) -> dict:
        ev = super().emit(type_, **fields)
        if type_ in ("progress", "epoch"):
            f = dict(fields)
            f["phase"] = f"{self.prefix}:{f.get('phase', '')}"
            self.parent.emit(type_, **f)
        return ev
