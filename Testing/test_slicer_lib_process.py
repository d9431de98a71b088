"""Launching aeseg in the background: argument lists, graceful cancel, and killing the process tree.

The fake jobs are tiny Python scripts (no torch) that write events.jsonl like a run does and
start a grandchild, as a data loader would.
"""

import json
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "AnnotationEfficientSeg"))

from AnnotationEfficientSegLib import process as P  # noqa: E402
from AnnotationEfficientSegLib.events import CANCELLED, JobWatcher  # noqa: E402

posix_only = pytest.mark.skipif(os.name == "nt", reason="process groups and /proc are POSIX")

FAKE_JOB = textwrap.dedent(
    """
    import json, os, signal, subprocess, sys, time
    job, mode = sys.argv[1], sys.argv[2]
    os.makedirs(job, exist_ok=True)
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    with open(os.path.join(job, "grandchild.pid"), "w") as f:
        f.write(str(grandchild.pid))
    events = open(os.path.join(job, "events.jsonl"), "a")
    def emit(**e):
        events.write(json.dumps(e) + "\\n"); events.flush()
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    elif mode == "term":
        def on_term(*_):
            emit(type="error", message="terminated"); grandchild.kill(); sys.exit(3)
        signal.signal(signal.SIGTERM, on_term)
    emit(type="start", epochs=1)
    for step in range(1, 100000):
        if mode == "cooperative" and os.path.exists(os.path.join(job, "cancel")):
            emit(type="cancelled"); grandchild.terminate(); grandchild.wait(); sys.exit(0)
        emit(type="progress", epoch=1, epochs=1, step=step, steps=100000, losses={"loss": 1.0 / step})
        time.sleep(0.02)
    """
)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"  # a zombie is dead


def _start_fake(tmp_path, mode):
    script = tmp_path / "fake_job.py"
    script.write_text(FAKE_JOB)
    job = tmp_path / f"job-{mode}"
    p = P.ManagedProcess([sys.executable, str(script), str(job), mode], job_dir=job, log_dir=tmp_path / "logs",
                         env=P.child_env()).start()
    deadline = time.monotonic() + 10
    while not ((job / "grandchild.pid").exists() and (job / "events.jsonl").exists()
               and (job / "events.jsonl").stat().st_size > 0):
        assert time.monotonic() < deadline, "fake job did not start"
        assert p.poll() is None, p.stderr_text()
        time.sleep(0.02)
    time.sleep(0.1)
    return p, job, int((job / "grandchild.pid").read_text())


def test_argument_lists():
    py = "/opt/Slicer/bin/PythonSlicer"
    assert P.aeseg_command(py, *P.validate_args("/data/my cohort")) == [py, "-m", "aeseg", "validate",
                                                                         "/data/my cohort", "--json"]
    assert P.train_args("/c", "aide", "/j", set_args=["--set", "epochs=5"], device="cuda", seed=7) == [
        "train", "/c", "--method", "aide", "--out", "/j", "--set", "epochs=5", "--device", "cuda", "--seed", "7"]
    assert P.train_args("/c", "aide", "/j", config_file="/j.json") == [
        "train", "/c", "--method", "aide", "--out", "/j", "--config", "/j.json"]
    assert P.resume_args("/j") == ["train", "--resume", "/j"]
    assert P.export_args("/c", "/o", "nnunet", cases=["a", "b"], labels="refined") == [
        "export", "/c", "--out", "/o", "--format", "nnunet", "--cases", "a,b", "--labels", "refined"]
    with pytest.raises(ValueError):
        P.export_args("/c", "/o", "zip")
    with pytest.raises(ValueError):
        P.export_args("/c", "/o", "nifti", cases=["a,b"])
    env = P.child_env(["/mod dir"], base={"PYTHONPATH": "/old", "X": "1"})
    assert env["PYTHONPATH"] == os.pathsep.join(["/mod dir", "/old"]) and env["X"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert P.missing_modules(["json", "surely_not_a_module_xyz"]) == ["surely_not_a_module_xyz"]


def test_run_json_and_failures(tmp_path):
    code = "import json, sys; print('log line'); print(json.dumps({'ok': False, 'n': 3})); sys.exit(1)"
    assert P.run_json([sys.executable, "-c", code], ok_codes=(0, 1)) == {"ok": False, "n": 3}
    with pytest.raises(P.CommandError, match="exit 1"):
        P.run_json([sys.executable, "-c", code])
    with pytest.raises(P.CommandError, match="boom"):
        P.run_json([sys.executable, "-c", "import sys; sys.stderr.write('boom\\n'); sys.exit(2)"])
    with pytest.raises(P.CommandError, match="timed out"):
        P.run_json([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5)


def test_short_commands_leave_no_temporary_folder(tmp_path, monkeypatch):
    """``run_json`` makes its own log folder; once the output is read, nothing of it is left."""
    monkeypatch.setattr(P.tempfile, "tempdir", str(tmp_path))
    assert P.run_json([sys.executable, "-c", "import json; print(json.dumps({'a': 1}))"]) == {"a": 1}
    with pytest.raises(P.CommandError):
        P.run_json([sys.executable, "-c", "import sys; sys.exit(2)"])
    assert list(tmp_path.iterdir()) == []
    # a log folder the caller gave is the caller's: its other files and the folder stay
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "keep.txt").write_text("x")
    q = P.ManagedProcess([sys.executable, "-c", "print(1)"], log_dir=logs).start()
    assert q.wait(timeout=10) == 0
    q.cleanup_logs()
    assert [f.name for f in logs.iterdir()] == ["keep.txt"]


def test_poll_never_blocks_and_output_goes_to_files(tmp_path):
    p = P.ManagedProcess([sys.executable, "-c", "import sys, time; print('x' * 200000); "
                          "sys.stderr.write('err'); time.sleep(0.3)"], log_dir=tmp_path).start()
    t0 = time.monotonic()
    assert p.poll() is None and time.monotonic() - t0 < 0.1  # a big output cannot block the child
    assert p.wait(timeout=10) == 0
    r = p.result()
    assert len(r.stdout.strip()) == 200000 and r.stderr == "err"


@posix_only
def test_graceful_cancel_through_the_cancel_file(tmp_path):
    p, job, grandchild = _start_fake(tmp_path, "cooperative")
    assert _alive(grandchild)
    p.request_cancel(grace_s=20, term_s=5)
    assert (job / "cancel").exists()
    assert p.wait(timeout=10) == 0  # exited by itself: no signal needed
    w = JobWatcher(job)
    w.update(final=True)
    assert w.state.status == CANCELLED
    assert not _alive(grandchild)
    assert P.clear_cancel_file(job) and not (job / "cancel").exists()


@posix_only
def test_sigterm_after_grace_period(tmp_path):
    p, job, grandchild = _start_fake(tmp_path, "term")  # ignores the cancel file, handles SIGTERM
    p.request_cancel(grace_s=0.3, term_s=30)
    assert p.wait(timeout=10) == 3
    lines = [json.loads(x) for x in (job / "events.jsonl").read_text().splitlines()]
    assert lines[-1] == {"type": "error", "message": "terminated"}
    assert not _alive(grandchild)


@posix_only
def test_tree_kill_of_a_job_that_ignores_cancel_and_sigterm(tmp_path):
    p, job, grandchild = _start_fake(tmp_path, "stubborn")
    assert _alive(grandchild)
    t0 = time.monotonic()
    p.request_cancel(grace_s=0.2, term_s=0.4)
    code = p.wait(timeout=10)
    assert code == -9  # SIGKILL
    assert time.monotonic() - t0 < 5
    deadline = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild), "the grandchild survived the tree kill"


@posix_only
def test_kill_now_and_leftover_children_after_exit(tmp_path):
    p, job, grandchild = _start_fake(tmp_path, "stubborn")
    p.kill()
    assert p.poll() == -9
    deadline = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild)

    # a process that exits normally but leaves a child behind: the child is cleaned up too
    code = ("import subprocess, sys; c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            "print(c.pid)")
    q = P.ManagedProcess([sys.executable, "-c", code], log_dir=tmp_path).start()
    assert q.wait(timeout=10) == 0
    orphan = int(q.stdout_text().strip())
    deadline = time.monotonic() + 5
    while _alive(orphan) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(orphan)
