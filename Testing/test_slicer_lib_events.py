"""events.jsonl tailing and progress state of the Slicer module's Slicer-free library."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "AnnotationEfficientSeg"))

from AnnotationEfficientSegLib.events import (  # noqa: E402
    CANCELLED, DONE, ERROR, IDLE, RUNNING, EventTail, JobWatcher, ProgressState, format_duration, read_job_state,
)


def _line(**e) -> bytes:
    return (json.dumps(e) + "\n").encode()


def test_tail_waits_for_partial_last_line_and_reads_appends(tmp_path):
    path = tmp_path / "events.jsonl"
    tail = EventTail(path)
    assert tail.read_new() == []  # no file yet

    full = _line(type="start", epochs=2) + _line(type="progress", epoch=1, epochs=2, step=1, steps=4)
    half = b'{"type": "progress", "epoch": 1, "ep'
    path.write_bytes(full + half)
    events = tail.read_new()
    assert [e["type"] for e in events] == ["start", "progress"]
    assert tail.read_new() == []  # the half line is not returned, nor lost

    with open(path, "ab") as f:
        f.write(b'ochs": 2, "step": 2, "steps": 4}\n' + _line(type="epoch", epoch=1, val_dice=0.5))
    events = tail.read_new()
    assert [(e["type"], e.get("step")) for e in events] == [("progress", 2), ("epoch", None)]
    assert tail.bad_lines == 0

    with open(path, "ab") as f:
        f.write(b"not json at all\n" + _line(type="done"))
    events = tail.read_new()
    assert [e["type"] for e in events] == ["done"]
    assert tail.bad_lines == 1


def test_tail_final_parses_unterminated_line_and_restarts_after_truncation(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(_line(type="start") + b'{"type": "done"}')
    tail = EventTail(path)
    assert [e["type"] for e in tail.read_new()] == ["start"]
    assert [e["type"] for e in tail.read_new(final=True)] == ["done"]

    # replaced by a shorter file (a job folder reused): read from the start again
    path.write_bytes(_line(type="start", epochs=9))
    events = tail.read_new()
    assert events == [{"type": "start", "epochs": 9}]


def test_progress_state_fraction_losses_metrics_and_summary():
    st = ProgressState()
    assert st.status == IDLE and st.summary() == "Not started" and st.fraction is None
    st.apply({"type": "start", "epochs": 100}, now=0.0)
    assert st.status == RUNNING
    st.apply({"type": "progress", "epoch": 3, "epochs": 100, "step": 40, "steps": 120,
              "losses": {"loss": 0.41, "dice": "0.2", "bad": "x"}, "eta_s": 812, "phase": "train"}, now=10.0)
    assert st.epoch == 3 and st.step == 40 and st.steps == 120
    assert st.losses == {"loss": 0.41, "dice": 0.2}
    assert abs(st.fraction - (2 + 40 / 120) / 100) < 1e-9
    text = st.summary(now=10.0)
    assert "Epoch 3/100" in text and "step 40/120" in text and "loss 0.41" in text and "ETA 13 min 32 s" in text
    # the run's ETA counts down between events
    assert st.eta_now(now=70.0) == 752.0
    st.apply({"type": "epoch", "epoch": 3, "val_dice": 0.8, "losses": {"loss": 0.4}, "best": True,
              "time": 1795312533.0}, now=80.0)
    assert st.metrics == {"val_dice": 0.8}
    assert st.history[-1] == {"epoch": 3, "val_dice": 0.8, "loss:loss": 0.4}
    assert "val Dice 0.800" in st.summary(now=80.0)
    st.apply({"type": "artifact", "path": "quality.csv", "kind": "quality"})
    assert st.artifact_paths("quality") == ["quality.csv"]
    st.apply({"type": "done"})
    assert st.status == DONE and st.fraction == 1.0 and st.summary().startswith("Finished")


def test_eta_falls_back_to_linear_estimate_without_eta_field():
    st = ProgressState()
    st.apply({"type": "progress", "epoch": 1, "epochs": 10, "step": 0, "steps": 10}, now=0.0)
    assert st.eta_now(now=0.0) is None  # nothing measured yet
    st.apply({"type": "progress", "epoch": 2, "epochs": 10, "step": 0, "steps": 10}, now=30.0)
    # 10 % in 30 s → 90 % left takes 270 s
    assert abs(st.eta_now(now=30.0) - 270.0) < 1e-6


def test_error_cancel_resume_and_process_exit():
    st = ProgressState()
    st.apply({"type": "start"})
    st.apply({"type": "cancelled"})
    assert st.status == CANCELLED and st.eta_now() is None
    st.apply({"type": "start"})  # resumed: the same events file goes on
    assert st.status == RUNNING and st.starts == 2
    st.apply({"type": "error", "message": "CUDA out of memory"})
    assert st.status == ERROR and "CUDA out of memory" in st.summary()

    crashed = ProgressState()
    crashed.apply({"type": "progress", "epoch": 1, "epochs": 2})
    crashed.process_exited(-9, "Traceback...\nKilledError: boom")
    assert crashed.status == ERROR and "-9" in crashed.message and "boom" in crashed.message
    ended = ProgressState()
    ended.apply({"type": "done"})
    ended.process_exited(1)
    assert ended.status == DONE  # the events file is the truth once it reported an end


def test_job_watcher_and_read_job_state(tmp_path):
    (tmp_path / "events.jsonl").write_bytes(_line(type="start", epochs=2)
                                            + _line(type="progress", epoch=2, epochs=2, step=1, steps=2))
    w = JobWatcher(tmp_path)
    assert len(w.update()) == 2 and w.state.status == RUNNING
    with open(tmp_path / "events.jsonl", "ab") as f:
        f.write(_line(type="done"))
    assert [e["type"] for e in w.update()] == ["done"]
    assert read_job_state(tmp_path).status == DONE


def test_format_duration():
    assert format_duration(None) == "–"
    assert format_duration(5) == "5 s"
    assert format_duration(812) == "13 min 32 s"
    assert format_duration(4000) == "1 h 06 min"
    assert format_duration(3 * 86400 + 7200) == "3 d 02 h"
    assert format_duration(float("nan")) == "–"
