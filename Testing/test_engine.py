"""The training engine end to end: a complete job folder, checkpoints, cancel and exact
resume, task standardization."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import slicerio
import torch

from aeseg.cohort import load_cohort, read_image
from aeseg.engine.config import resolve_config
from aeseg.engine.events import read_events
from aeseg.engine.loop import create_job, run_job
from aeseg.errors import JobError, MethodUnavailable

ROOT = Path(__file__).resolve().parents[1]
TINY = {"engine.epochs": 2, "engine.batch_size": 4, "data.size": 32, "features": 8, "depth": 3}


def _train(cohort, out, method="supervised", echo=None, **over):
    cfg = resolve_config(method, {**TINY, **over})
    job = create_job(out, cohort, cfg)
    return run_job(job.root, progress_bar=False, echo=echo)


@pytest.fixture(scope="module")
def finished_job(tiny_cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("jobs") / "sup"
    res = _train(tiny_cohort, out, labels="all")
    assert res.status == "done"
    return out


def test_job_folder_is_complete(finished_job, tiny_cohort):
    j = finished_job
    for rel in ("job.json", "events.jsonl", "checkpoints/last.pt", "model/model.pt", "model/model.json",
                "quality.csv", "report/report.html", "report/loss_curves.png", "report/overview.png"):
        assert (j / rel).is_file(), rel
    meta = json.loads((j / "job.json").read_text())
    assert meta["method"] == "supervised" and meta["config"]["method"]["labels"] == "all"
    assert set(meta["versions"]) >= {"aeseg", "torch", "monai"}
    events = read_events(j / "events.jsonl")
    types = [e["type"] for e in events]
    assert types[0] == "start" and types[-1] == "done"
    assert [e["epoch"] for e in events if e["type"] == "epoch"] == [1, 2]
    prog = [e for e in events if e["type"] == "progress"]
    assert prog and {"epoch", "epochs", "step", "steps", "losses", "eta_s"} <= set(prog[-1])
    cases = load_cohort(tiny_cohort).cases
    assert sorted(p.name for p in (j / "pseudo_labels").iterdir()) == sorted(f"{c.case_id}.seg.nrrd" for c in cases)
    ck = torch.load(j / "checkpoints" / "last.pt", weights_only=True)
    assert ck["loop"]["complete"] is True


def test_seg_nrrd_reads_back_with_case_geometry(finished_job, tiny_cohort):
    co = load_cohort(tiny_cohort)
    rows = {r["case"]: r for r in csv.DictReader(open(finished_job / "quality.csv"))}
    for c in co.cases[:4]:
        seg = slicerio.read_segmentation(str(finished_job / "pseudo_labels" / f"{c.case_id}.seg.nrrd"))
        img = read_image(c.image)
        np.testing.assert_allclose(seg["ijkToLPS"], img.geometry.ijk_to_lps(), atol=1e-4)
        vox = np.asarray(seg["voxels"])
        assert vox.shape[-3:] == img.geometry.size  # (i, j, k)
        names = [s["name"] for s in seg["segments"]]
        assert names[0] == "Pseudo label"
        assert ("Given label" in names) == (c.label is not None and c.split != "test")
        status = seg["segments"][0]["status"]  # slicerio parses Segmentation.Status
        assert status == ("flagged" if rows[c.case_id]["flag"] == "true" else "completed")
        assert float(seg["segments"][0]["tags"]["AESeg.score"]) == pytest.approx(float(rows[c.case_id]["score"]), abs=1e-3)


def test_quality_csv_ranks_flagged_lowest_first(finished_job):
    rows = list(csv.DictReader(open(finished_job / "quality.csv")))
    assert [int(r["rank"]) for r in rows] == list(range(1, len(rows) + 1))
    flags = [r["flag"] == "true" for r in rows]
    assert any(flags) and flags == sorted(flags, reverse=True)  # flagged first
    flagged = [float(r["score"]) for r in rows if r["flag"] == "true"]
    labelled = [float(r["score"]) for r in rows if r["score_source"] == "label_agreement"]
    assert max(flagged) <= np.quantile(labelled + flagged, 0.5) + 1e-9


def _cli(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "AnnotationEfficientSeg"), OMP_NUM_THREADS="1")
    return [sys.executable, "-m", "aeseg", *args], env


def _weights(job):
    return torch.load(job / "model" / "model.pt", weights_only=True)["modules"]


def _wait_for(path, pred, proc, timeout=240):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred(read_events(path)):
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("how", ["cancel_file", "sigterm"])
def test_cancelled_run_resumes_to_the_same_model(tiny_cohort, tmp_path, how):
    args = ["train", str(tiny_cohort), "--method", "mean_teacher", "--no-progress", "--set", "progress_interval=0",
            "--set", "batch_size=2", "--set", "data.size=32", "--set", "features=8", "--set", "depth=3", "--epochs", "3"]
    ref = tmp_path / "ref"
    cmd, env = _cli(*args, "--out", str(ref))
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    job = tmp_path / "job"
    cmd, env = _cli(*args, "--out", str(job))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ok = _wait_for(job / "events.jsonl", lambda ev: any(e["type"] == "progress" and e["epoch"] == 2 and e["step"] >= 2 for e in ev), proc)
    assert ok, "the run never reached epoch 2"
    if how == "cancel_file":
        (job / "cancel").touch()
    else:
        proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err.decode()
    ev = read_events(job / "events.jsonl")
    cancelled = [e for e in ev if e["type"] == "cancelled"]
    assert cancelled and cancelled[0]["epoch"] == 2 and 0 < cancelled[0]["step"] < cancelled[0]["steps"], cancelled
    assert not (job / "model").exists()
    cmd, env = _cli("status", str(job), "--json")
    st = json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout)
    assert (st["status"], st["epoch"], st["checkpoint"]) == ("cancelled", 2, True)
    assert st["best_val_dice"] == max(e["val_dice"] for e in ev if e["type"] == "epoch")
    cmd, env = _cli("train", "--resume", str(job), "--no-progress")
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    ev = read_events(job / "events.jsonl")
    assert [e["epoch"] for e in ev if e["type"] == "epoch"] == [1, 2, 3]  # no epoch lost or repeated
    assert not (job / "cancel").exists()
    a, b = _weights(ref), _weights(job)
    for net in a:
        for k in a[net]:
            torch.testing.assert_close(a[net][k], b[net][k], rtol=1e-5, atol=1e-6, msg=f"{net}.{k}")


def test_status_reads_a_running_job_from_its_folder(tmp_path):
    from aeseg.engine.status import NOTES_SHOWN, format_status, job_status

    job = tmp_path / "job"
    (job / "checkpoints").mkdir(parents=True)
    (job / "job.json").write_text(json.dumps({"method": "aide", "cohort": "/data/cohort"}))
    events = [{"type": "start", "time": 900.0, "epochs": 4},
              {"type": "epoch", "time": 950.0, "epoch": 1, "epochs": 4, "val_dice": 0.61},
              {"type": "epoch", "time": 980.0, "epoch": 2, "epochs": 4, "val_dice": 0.58},
              *({"type": "note", "time": 985.0, "message": f"note {i}"} for i in range(NOTES_SHOWN + 2)),
              {"type": "artifact", "time": "?", "path": "maps", "kind": "maps"},  # a bad time is skipped
              {"type": "progress", "time": 1000.0, "epoch": 3, "epochs": 4, "step": 5, "steps": 10,
               "losses": {"loss": 0.4}, "eta_s": 100.0}]
    (job / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events) + '{"type": "prog')  # being written
    s = job_status(job, now=1030.0)
    assert s["status"] == "running" and (s["epoch"], s["epochs"]) == (3, 4)
    assert s["eta_s"] == pytest.approx(70.0) and s["last_event_age_s"] == pytest.approx(30.0)
    assert (s["best_val_dice"], s["best_epoch"]) == (0.61, 1)
    assert s["fraction"] == pytest.approx(2.5 / 4) and not s["checkpoint"]
    text = format_status(s)
    assert "status:  running — Epoch 3/4 · step 5/10" in text
    assert "ETA 1 min 10 s" in text and "--resume" not in text  # no checkpoint yet: nothing to resume
    assert f"note {NOTES_SHOWN + 1}" in text and "note 1\n" not in text and "note 0" not in text
    (job / "checkpoints" / "last.pt").write_bytes(b"x")
    (job / "cancel").touch()
    text = format_status(job_status(job, now=1030.0))
    assert f"aeseg train --resume {job.resolve()}" in text and "cancel requested" in text
    with pytest.raises(JobError, match="not a job folder"):
        job_status(tmp_path)
    (job / "job.json").write_bytes(b"\xff{")  # neither UTF-8 nor JSON: one clear error, not a traceback
    with pytest.raises(JobError, match="unreadable"):
        job_status(job)


def test_status_of_several_jobs_is_one_line_each(tmp_path, capsys):
    from aeseg.cli import main

    done, running = tmp_path / "done", tmp_path / "running"
    for job, method, events in (
            (done, "supervised", [{"type": "start", "time": 100.0, "epochs": 2},
                                  {"type": "epoch", "time": 110.0, "epoch": 1, "epochs": 2, "val_dice": 0.7},
                                  {"type": "epoch", "time": 120.0, "epoch": 2, "epochs": 2, "val_dice": 0.65},
                                  {"type": "done", "time": 121.0}]),
            (running, "aide", [{"type": "start", "time": 100.0, "epochs": 4},
                               {"type": "progress", "time": 9e12, "epoch": 1, "epochs": 4, "step": 1, "steps": 2,
                                "losses": {"loss": 1.0}, "eta_s": 3600.0}])):
        job.mkdir()
        (job / "job.json").write_text(json.dumps({"method": method, "cohort": "/c"}))
        (job / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (running / "cancel").touch()
    assert main(["status", str(done), str(running)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["job", "method", "status"] and len(lines) == 3
    assert lines[1].split()[:5] == [str(done), "supervised", "done", "2/2", "0.700"]
    assert lines[2].split()[:5] == [str(running), "aide", "running", "(cancel", "requested)"] and "ETA" in lines[2]
    # a folder that is not a job is its own row, and the exit status says so
    assert main(["status", str(done), str(tmp_path)]) == 2
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith(str(tmp_path)) and "error: not a job folder (no job.json)" in last
    assert main(["status", str(done), str(tmp_path), "--json"]) == 2
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["status"] == "done" and "not a job folder" in rows[1]["error"]


def test_task_standardization_runs_as_a_sub_job(tiny_cohort, tmp_path, capsys):
    from aeseg.cli import print_note

    echoed = []
    res = _train(tiny_cohort, tmp_path / "std", labels="all", standardize=True,
                 echo=lambda ev: (echoed.append(ev), print_note(ev)))
    assert res.status == "done"
    events = read_events(tmp_path / "std" / "events.jsonl")
    assert [e["type"] for e in echoed] == [e["type"] for e in events]  # every event written, in order
    notes = [e["message"] for e in events if e["type"] == "note"]
    assert any(n.startswith("task standardization") for n in notes)
    # the command line prints the notes alone, one line each
    assert capsys.readouterr().err.splitlines() == [f"aeseg: note: {n}" for n in notes]
    sub = tmp_path / "std" / "standardize"
    assert (sub / "model" / "model.pt").is_file()
    co = load_cohort(tiny_cohort)
    unlabelled = [c.case_id for c in co.cases if c.split == "train" and c.label_kind == "none"]
    assert unlabelled
    rows = {r["case"]: r for r in csv.DictReader(open(tmp_path / "std" / "quality.csv"))}
    for cid in unlabelled:
        assert (sub / "pseudo_labels" / f"{cid}.seg.nrrd").is_file()
        assert rows[cid]["label_kind"] == "noisy"  # its pseudo label is now a training label
    phases = {e.get("phase") for e in read_events(tmp_path / "std" / "events.jsonl") if e["type"] == "epoch"}
    assert phases == {"standardize:train", "train"}
    assert sorted(p.name for p in (tiny_cohort / "images").iterdir())  # the cohort folder is untouched
    assert not (tiny_cohort / "refined").exists()


def test_errors_are_clear_and_write_nothing(tiny_cohort, tmp_path):
    with pytest.raises(MethodUnavailable, match="clean-labelled"):
        import shutil

        co = tmp_path / "noclean"
        shutil.copytree(tiny_cohort, co, symlinks=True)
        rows = (co / "cohort.csv").read_text().splitlines()
        keep = [rows[0]] + [r for r in rows[1:] if ",clean," not in r or ",val" in r or ",test" in r]
        (co / "cohort.csv").write_text("\n".join(keep) + "\n")
        create_job(tmp_path / "j1", co, resolve_config("mean_teacher", TINY))
    assert not (tmp_path / "j1").exists()
    (tmp_path / "j2").mkdir()
    (tmp_path / "j2" / "x").write_text("keep me")
    with pytest.raises(JobError, match="not empty"):
        create_job(tmp_path / "j2", tiny_cohort, resolve_config("supervised", TINY))
    assert (tmp_path / "j2" / "x").read_text() == "keep me"
    with pytest.raises(JobError, match="no checkpoint"):
        create_job(tmp_path / "j3", tiny_cohort, resolve_config("supervised", TINY))
        run_job(tmp_path / "j3", resume=True)


def test_a_failing_method_figure_leaves_the_job_done_with_its_report(tiny_cohort, tmp_path, monkeypatch):
    """The method's own report figures come last; when one fails the job still ends done,
    with every output and the rest of the report, and a note says what was not drawn."""
    from aeseg.methods.supervised import Supervised

    def broken(self, job, ranked):
        raise RuntimeError("no display")

    monkeypatch.setattr(Supervised, "report_figures", broken)
    res = _train(tiny_cohort, tmp_path / "job", labels="all")
    assert res.status == "done"
    report = tmp_path / "job" / "report"
    assert sorted(p.name for p in report.iterdir()) == ["loss_curves.png", "overview.png", "report.html"]
    events = read_events(tmp_path / "job" / "events.jsonl")
    notes = [e["message"] for e in events if e["type"] == "note"]
    assert any("supervised figures were not drawn (RuntimeError: no display)" in m for m in notes)
    assert events[-1]["type"] == "done"
