"""``aeseg status JOB...``: where a job stands, read from its folder alone (``job.json``,
``events.jsonl``, the checkpoint and cancel files), so that a run started elsewhere (with
``nohup``, on a cluster node, by the Slicer module) can be checked from any shell. With
several jobs (``aeseg status jobs/*``), one line each.
The folder's layout is :class:`.job.JobFolder`'s; it is only read here."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..io.values import number
from .job import JobFolder, validate_job_path
from .progress import DONE, EVENTS_FILE, RUNNING, EventTail, ProgressState, format_duration

NOTES_SHOWN = 5


def job_status(job_dir: str | Path, now: float | None = None) -> dict[str, Any]:
    """The state of the job in ``job_dir`` as a JSON-ready dict. ``now``: wall-clock time
    the ETA and the age of the last event are counted to (default: the current time)."""
    job = JobFolder(validate_job_path(job_dir), writer=False)
    meta = job.read_meta()
    now = time.time() if now is None else now
    events = EventTail(job.root / EVENTS_FILE).read_new(final=True)
    state = ProgressState()
    times = [number(ev.get("time")) for ev in events]
    for ev, t in zip(events, times):  # the events' own wall-clock times, so that the ETA counts down to ``now``
        state.apply(ev, now=now if t is None else t)
    last = max((t for t in times if t is not None), default=None)
    vals = [(h["epoch"], h["val_dice"]) for h in state.history if "val_dice" in h]
    best = max(vals, key=lambda ev: ev[1]) if vals else None
    report = job.report_dir / "report.html"
    return {
        "job": str(job.root),
        "method": meta.get("method"),
        "cohort": meta.get("cohort"),
        "status": state.status if events else "not started",
        "summary": state.summary(now=now),
        "phase": state.phase,
        "epoch": state.epoch,
        "epochs": state.epochs,
        "fraction": state.fraction,
        "eta_s": state.eta_now(now=now) if state.status == RUNNING else None,
        "last_event_age_s": None if last is None else max(now - last, 0.0),
        "best_val_dice": None if best is None else best[1],
        "best_epoch": None if best is None else best[0],
        "message": state.message,
        "notes": [str(e.get("message", "")) for e in events if e.get("type") == "note"],
        "checkpoint": (job.checkpoints / "last.pt").is_file(),
        "cancel_requested": job.cancel_requested(),
        "report": str(report) if report.is_file() else None,
    }


def format_status(s: dict[str, Any]) -> str:
    """The dict of :func:`job_status` as lines for a terminal."""
    summary = f"running — {s['summary']}" if s["status"] == RUNNING else s["summary"]
    lines = [f"job:     {s['job']}", f"method:  {s['method']} on {s['cohort']}", f"status:  {summary}"]
    if s["last_event_age_s"] is not None:
        lines.append(f"last event: {format_duration(s['last_event_age_s'])} ago")
    if s["best_val_dice"] is not None:
        lines.append(f"best validation Dice: {s['best_val_dice']:.3f} (epoch {s['best_epoch']})")
    if s["cancel_requested"]:
        lines.append("cancel requested: the run stops after its current step")
    if s["status"] not in (DONE, "not started") and s["checkpoint"]:
        lines.append(f"if no process runs it any more: aeseg train --resume {s['job']}")
    if s["report"]:
        lines.append(f"report:  {s['report']}")
    notes = s["notes"]
    if notes:
        more = len(notes) - NOTES_SHOWN
        lines.append("notes:" + (f" (the last {NOTES_SHOWN} of {len(notes)})" if more > 0 else ""))
        lines += [f"  {n}" for n in notes[-NOTES_SHOWN:]]
    return "\n".join(lines)


def format_status_table(rows: list[tuple[str, dict[str, Any] | str]]) -> str:
    """One line per job: (folder as given, :func:`job_status` dict or the error text)."""
    table = [("job", "method", "status", "epoch", "best val Dice", "ETA / last event")]
    for name, s in rows:
        if isinstance(s, str):  # the error names the folder; the row already does
            table.append((name, "", "error: " + (s.split(": ", 1)[1] if ": " in s else s), "", "", ""))
            continue
        epoch = f"{s['epoch']}/{s['epochs']}" if s["epoch"] is not None and s["epochs"] else ""
        best = f"{s['best_val_dice']:.3f} ({s['best_epoch']})" if s["best_val_dice"] is not None else ""
        when = (f"ETA {format_duration(s['eta_s'])}" if s["eta_s"] is not None else
                f"{format_duration(s['last_event_age_s'])} ago" if s["last_event_age_s"] is not None else "")
        status = s["status"] + (" (cancel requested)" if s["cancel_requested"] else "")
        table.append((name, str(s["method"] or ""), status, epoch, best, when))
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table)
