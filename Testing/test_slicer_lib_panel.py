"""The module panel (Qt, no MRML) offscreen with PySide6, driven against a fake ``aeseg`` CLI.

The fake CLI (written to a temporary folder and put first on the children's PYTHONPATH)
follows the documented contracts: ``validate/methods/devices --json``, ``train`` writing
job.json, events.jsonl and quality.csv and honouring the cancel file, ``train --resume``
and ``export``. One test renders the panel to a PNG for visual review.
"""

import json
import os
import shutil
import sys
import textwrap
import time
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "AnnotationEfficientSeg"))

pytest.importorskip("PySide6")

from AnnotationEfficientSegLib import qt_shim as q  # noqa: E402
from AnnotationEfficientSegLib.panel import Panel  # noqa: E402

METHODS = [
    {"name": "supervised", "title": "Supervised (clean labels)", "description": "Train on the clean labels only.",
     "needs": "clean labels", "config": [
         {"name": "epochs", "type": "int", "default": 3, "help": "Training epochs", "min": 1, "max": 1000},
         {"name": "lr", "type": "float", "default": 0.001, "help": "Learning rate", "min": 0, "max": 1},
         {"name": "amp", "type": "bool", "default": False, "help": "Mixed precision"}]},
    {"name": "mean_teacher", "title": "Mean teacher", "description": "Semi-supervised consistency.",
     "needs": "unlabelled cases", "config": [
         {"name": "epochs", "type": "int", "default": 3, "help": "Training epochs", "min": 1, "max": 1000},
         {"name": "ema_decay", "type": "float", "default": 0.99, "help": "Teacher EMA", "min": 0, "max": 1}]},
    # a method the module has never heard of: it must show up with its own form
    {"name": "aide", "title": "AIDE (noisy labels)", "description": "Co-teaching with label correction.",
     "needs": "noisy labels", "config": [
         {"name": "epochs", "type": "int", "default": 3, "help": "Training epochs", "min": 1, "max": 1000},
         {"name": "correction_start", "type": "int", "default": 2, "help": "Epoch of first correction", "min": 0,
          "max": 1000},
         {"name": "selection", "type": "choice", "default": "small_loss", "choices": ["small_loss", "all"],
          "help": "Sample selection"}]},
]

FAKE_MAIN = textwrap.dedent(
    """
    import csv, json, os, sys, time
    METHODS = json.loads(os.environ["FAKE_AESEG_METHODS"])
    STEP_S = float(os.environ.get("FAKE_AESEG_STEP_S", "0.005"))
    args = sys.argv[1:]

    def opt(name, default=None):
        return args[args.index(name) + 1] if name in args else default

    def emit(job, **e):
        with open(os.path.join(job, "events.jsonl"), "a") as f:
            f.write(json.dumps(e) + "\\n")

    def cases_of(cohort):
        return sorted(n.split(".")[0] for n in os.listdir(os.path.join(cohort, "images")))

    def run(job, config, start_epoch=1):
        epochs, steps = int(config.get("epochs", 3)), 4
        emit(job, type="start", epochs=epochs)
        for epoch in range(start_epoch, epochs + 1):
            for step in range(1, steps + 1):
                if os.path.exists(os.path.join(job, "cancel")):
                    os.makedirs(os.path.join(job, "checkpoints"), exist_ok=True)
                    json.dump({"epoch": epoch}, open(os.path.join(job, "checkpoints", "last.json"), "w"))
                    emit(job, type="cancelled")
                    return 0
                emit(job, type="progress", epoch=epoch, epochs=epochs, step=step, steps=steps,
                     losses={"loss": round(1.0 / (epoch * steps + step), 4)}, eta_s=5, phase="train")
                time.sleep(STEP_S)
            emit(job, type="epoch", epoch=epoch, val_dice=round(0.5 + 0.1 * epoch, 3), losses={"loss": 0.1})
        cohort = json.load(open(os.path.join(job, "job.json")))["cohort"]
        cases = cases_of(cohort)
        tmp = os.path.join(job, ".quality.tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["case", "method", "score", "flag", "rank", "residual_energy"])
            for i, c in enumerate(cases):
                w.writerow([c, "supervised", 0.2 * (i + 1), "true" if i % 2 == 0 else "false", len(cases) - i, i * 1.5])
        os.replace(tmp, os.path.join(job, "quality.csv"))
        emit(job, type="artifact", path="quality.csv", kind="quality")
        os.makedirs(os.path.join(job, "maps", cases[0]), exist_ok=True)
        open(os.path.join(job, "maps", cases[0], "residuals.nrrd"), "w").close()
        os.makedirs(os.path.join(job, "report"), exist_ok=True)
        open(os.path.join(job, "report", "report.html"), "w").write("<html></html>")
        emit(job, type="artifact", path="report/report.html", kind="report")
        emit(job, type="note", message="round 2: validation Dice did not improve; remaining rounds skipped")
        emit(job, type="done")
        return 0

    cmd = args[0]
    if cmd == "methods":
        print(json.dumps(METHODS))
    elif cmd == "devices":
        print(json.dumps({"cuda": False, "devices": ["cpu"], "default": "cpu"}))
    elif cmd == "validate":
        cohort = os.path.abspath(args[1])
        cases = cases_of(cohort)
        print(json.dumps({
            "cohort": cohort, "ok": True,
            "summary": {"cases": len(cases), "splits": {"train": len(cases), "val": 0, "test": 0},
                        "label_kinds": {"clean": len(cases), "noisy": 0, "none": 0},
                        "presence": {"present": 0, "absent": 0}, "aux_masks": 0, "dims": "3D",
                        "sizes": [], "spacings": []},
            "cases": [{"case": c, "image": f"images/{c}.nii.gz", "label": f"labels/{c}.nii.gz",
                       "label_kind": "clean", "presence": None, "domain": None, "split": "train",
                       "label_value": 1, "refined": False} for c in cases],
            "problems": [{"file": "", "message": "no validation split", "fix": "add a split column",
                          "severity": "warning"}],
            "methods": [{"name": "supervised", "title": "Supervised (clean labels)", "supported": True, "reason": ""},
                        {"name": "mean_teacher", "title": "Mean teacher", "supported": False,
                         "reason": "needs unlabelled cases (found 0)"},
                        {"name": "aide", "title": "AIDE (noisy labels)", "supported": False,
                         "reason": "needs noisy labels (found 0)"}]}))
    elif cmd == "train" and "--resume" in args:
        job = opt("--resume")
        meta = json.load(open(os.path.join(job, "job.json")))
        meta["resumed"] = meta.get("resumed", 0) + 1
        json.dump(meta, open(os.path.join(job, "job.json"), "w"))
        sys.exit(run(job, meta["config"]))
    elif cmd == "train":
        cohort, job, method = os.path.abspath(args[1]), opt("--out"), opt("--method")
        config = {f["name"]: f["default"] for m in METHODS if m["name"] == method for f in m["config"]}
        if opt("--config"):
            config.update(json.load(open(opt("--config"))))
        for i, a in enumerate(args):
            if a == "--set":
                k, v = args[i + 1].split("=", 1)
                config[k] = json.loads(v) if v not in ("",) else v
        os.makedirs(job, exist_ok=False)
        json.dump({"method": method, "cohort": cohort, "config": config, "seed": int(opt("--seed", 0)),
                   "device": opt("--device", "auto"), "argv": args}, open(os.path.join(job, "job.json"), "w"))
        sys.exit(run(job, config))
    elif cmd == "export":
        out = opt("--out")
        os.makedirs(out, exist_ok=True)
        json.dump({"argv": args}, open(os.path.join(out, "export.json"), "w"))
        print(json.dumps({"written": 1}))
    else:
        sys.stderr.write("unknown command\\n")
        sys.exit(2)
    """
)


@pytest.fixture(scope="module")
def app():
    return q.ensure_app()


@pytest.fixture
def fake_cli(tmp_path, monkeypatch):
    pkg = tmp_path / "fakecli" / "aeseg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text(FAKE_MAIN)
    monkeypatch.setenv("FAKE_AESEG_METHODS", json.dumps(METHODS))
    return tmp_path / "fakecli"


@pytest.fixture
def cohort(tmp_path):
    c = tmp_path / "cohort"
    for sub in ("images", "labels"):
        (c / sub).mkdir(parents=True)
        for case in ("c1", "c2", "c3"):
            (c / sub / f"{case}.nii.gz").write_bytes(b"x")
    return c


@pytest.fixture
def panel(app, fake_cli, tmp_path):
    p = Panel(python=sys.executable, python_path=[str(fake_cli)], log_dir=tmp_path / "logs", poll_ms=20)
    yield p
    p.shutdown()
    p.root.deleteLater()


def wait_until(app, cond, timeout=20.0):
    """Tests may spin the event loop; the panel itself never does."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        app.processEvents()
        if cond():
            return True
        time.sleep(0.01)
    app.processEvents()
    return cond()


def combo_items(combo):
    model = combo.model()
    return [(combo.itemText(i), combo.itemData(i), model.item(i).isEnabled()) for i in range(combo.count())]


def test_methods_listed_with_reasons_and_generated_forms(app, panel):
    panel.set_methods(METHODS)
    ui = panel.ui
    assert [d for _, d, _ in combo_items(ui.methodComboBox)] == ["supervised", "mean_teacher", "aide"]
    assert panel.form is not None and set(panel.form.editors) == {"epochs", "lr", "amp"}

    panel.set_validation({"cohort": "/c", "ok": True, "summary": {"cases": 2, "dims": "2D"}, "cases": [],
                          "problems": [], "methods": [
                              {"name": "supervised", "supported": False, "reason": "needs clean labels (found 0)"},
                              {"name": "mean_teacher", "supported": True, "reason": ""},
                              {"name": "aide", "supported": True, "reason": ""},
                              {"name": "shape_prior_gan", "title": "Shape prior GAN", "supported": False,
                               "reason": "needs auxiliary masks"}]})
    items = combo_items(ui.methodComboBox)
    assert [(d, en) for _, d, en in items] == [("mean_teacher", True), ("aide", True), ("supervised", False),
                                               ("shape_prior_gan", False)]
    assert items[2][0].endswith("(unavailable)")
    text = ui.methodUnavailableLabel.text()
    assert "needs clean labels (found 0)" in text and "Shape prior GAN" in text and "needs auxiliary masks" in text
    assert panel.selected_method() == "mean_teacher"
    assert set(panel.form.editors) == {"epochs", "ema_decay"}
    assert ui.methodFormContainer.findChild(q.QWidget, "config_ema_decay") is not None
    assert "2 cases" in ui.cohortSummaryLabel.text() and "Ready" in ui.cohortSummaryLabel.text()

    # switching methods keeps what the user typed for each
    panel.form.editors["epochs"].setValue(9)
    ui.methodComboBox.setCurrentIndex(1)
    assert panel.selected_method() == "aide" and "correction_start" in panel.form.editors
    assert panel.form.editors["selection"].currentText() == "small_loss"
    ui.methodComboBox.setCurrentIndex(0)
    assert panel.form.values()["epochs"] == 9
    state = panel.get_state()
    assert state["method"] == "mean_teacher" and state["configs"]["mean_teacher"]["epochs"] == 9

    # devices
    panel.set_devices({"cuda": True, "devices": ["cpu", "cuda:0"], "default": "cuda:0"})
    assert panel.selected_device() == "cuda" and "GPU found" in ui.deviceLabel.text()
    panel.set_devices({"cuda": False, "devices": ["cpu"], "default": "cpu"})
    assert panel.selected_device() == "cpu" and "No GPU" in ui.deviceLabel.text()


def test_train_command_from_the_panel(app, panel, cohort, tmp_path):
    panel.set_methods(METHODS)
    with pytest.raises(ValueError, match="cohort"):
        panel.train_command()
    panel.set_cohort_path(str(cohort))  # the job folder is suggested from cohort and method
    out = panel.output_path
    assert Path(out).parent == cohort.parent / "cohort_jobs" and Path(out).name.startswith("supervised-")
    panel.form.editors["epochs"].setValue(5)
    panel.form.editors["lr"].setText("2e-4")
    panel.ui.seedSpinBox.setValue(42)
    cmd = panel.train_command()
    assert cmd[:4] == [sys.executable, "-m", "aeseg", "train"]
    assert cmd[4:] == [str(cohort), "--method", "supervised", "--out", out, "--set", "epochs=5",
                       "--set", "lr=0.0002", "--device", "auto", "--seed", "42"]
    # the engine's epochs and free "key=value" settings
    panel.ui.epochsSpinBox.setValue(12)
    panel.ui.extraSetsLineEdit.setText("engine.batch_size=8  data.size=96")
    assert panel.train_command()[-8:-4] == ["--set", "engine.batch_size=8", "--set", "data.size=96"]
    assert "epochs=12" not in panel.train_command()  # supervised's own form has "epochs": the box is hidden
    assert not panel.ui.epochsSpinBox.isVisibleTo(panel.root)
    panel.ui.methodComboBox.setCurrentIndex(panel.ui.methodComboBox.findData("aide"))
    assert panel.form.set_args() == []
    panel.ui.methodComboBox.setCurrentIndex(0)
    panel.ui.extraSetsLineEdit.setText("oops")
    with pytest.raises(ValueError, match="key=value"):
        panel.train_command()
    panel.ui.extraSetsLineEdit.setText("")
    panel.form.editors["lr"].setText("7")
    with pytest.raises(ValueError, match="above the maximum"):
        panel.train_command()
    assert not panel.ui.startButton.isEnabled()
    panel.form.editors["lr"].setText("0.1")
    Path(out).mkdir(parents=True)
    (Path(out) / "something").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        panel.train_command()


def test_validate_train_review_retrain_export_end_to_end(app, panel, cohort, tmp_path):
    asked = []
    panel.preflight = lambda action: asked.append(action) or True
    selected = []
    panel.caseSelected.connect(lambda files, row: selected.append((files, row)))
    finished = []
    panel.jobFinished.connect(finished.append)

    opened = []
    panel.open_url = lambda path: opened.append(path) or True
    assert not panel.ui.reportButton.isEnabled() and not panel.open_report()  # no job, no report
    assert "No report yet" in panel.ui.messageLabel.text() and opened == []
    panel.set_cohort_path(str(cohort))
    panel.validate()
    assert wait_until(app, lambda: panel.validation is not None and panel.methods and panel.devices)
    assert "validate" in asked and "methods" in asked
    assert panel.selected_method() == "supervised"
    assert "3 cases" in panel.ui.cohortSummaryLabel.text()
    assert "no validation split" in panel.ui.cohortProblemsLabel.text()
    assert "needs noisy labels" in panel.ui.methodUnavailableLabel.text()

    panel.form.editors["epochs"].setValue(2)
    out = tmp_path / "jobs" / "run1"
    panel.ui.outputPathLineEdit.setText(str(out))
    assert panel.start()
    assert panel.job_running() and not panel.ui.startButton.isEnabled() and panel.ui.cancelButton.isEnabled()
    assert wait_until(app, lambda: finished), panel.ui.logTextEdit.toPlainText() + panel.ui.progressLabel.text()
    assert finished == ["done"]
    assert panel.ui.progressBar.value() == 1000 and "Finished" in panel.ui.progressLabel.text()
    assert "Best val Dice 0.700" in panel.ui.metricsLabel.text()
    assert "round 2: validation Dice did not improve" in panel.ui.logTextEdit.toPlainText()  # notes are logged
    assert panel.ui.reportButton.isEnabled()
    panel.ui.reportButton.click()
    assert opened == [str(out / "report" / "report.html")]
    panel.open_url = lambda path: False  # no browser on this desktop
    assert not panel.open_report() and "Could not open" in panel.ui.messageLabel.text()
    job = json.loads((out / "job.json").read_text())
    assert job["config"]["epochs"] == 2 and job["argv"][job["argv"].index("--device") + 1] == "cpu"

    # review queue: sorted by rank, with the method's own column
    t = panel.ui.reviewTable
    assert t.rowCount() == 3
    headers = [t.horizontalHeaderItem(i).text() for i in range(t.columnCount())]
    assert headers == ["rank", "case", "score", "flag", "reviewed", "residual energy"]
    assert [t.item(r, 1).text() for r in range(3)] == ["c3", "c2", "c1"]
    assert "3 cases · 2 flagged · 0 reviewed" in panel.ui.reviewCountsLabel.text()

    assert panel.next_flagged() == "c3"
    files, row = selected[-1]
    assert files.case == "c3" and row.flag and Path(files.image) == cohort / "images" / "c3.nii.gz"
    assert Path(files.label) == cohort / "labels" / "c3.nii.gz" and files.label_kind == "clean"
    assert panel.next_flagged() == "c1"
    assert selected[-1][0].maps == {"residuals": str(out / "maps" / "c1" / "residuals.nrrd")}
    assert [panel.ui.mapComboBox.itemText(i) for i in range(panel.ui.mapComboBox.count())] == ["none", "residuals"]
    maps = []
    panel.mapSelected.connect(lambda *a: maps.append(a))
    panel.ui.mapComboBox.setCurrentIndex(1)
    assert maps[-1] == ("c1", "residuals", str(out / "maps" / "c1" / "residuals.nrrd"))
    t.selectRow(1)
    assert selected[-1][0].case == "c2" and not selected[-1][1].flag

    accepted = []
    panel.acceptRequested.connect(accepted.append)
    panel.ui.acceptButton.click()
    assert accepted == ["c2"]
    panel.mark_reviewed("c2", cohort / "refined" / "c2.seg.nrrd")
    assert t.item(1, 4).text().startswith("✔")
    assert json.loads((out / "review.json").read_text())["reviewed"]["c2"]["refined"].endswith("c2.seg.nrrd")

    # retrain: a new job next to the old one, same method and config
    finished.clear()
    assert panel.retrain()
    assert wait_until(app, lambda: finished)
    new = tmp_path / "jobs" / "run1-retrain-1"
    assert panel.job_dir == new and finished == ["done"]
    new_job = json.loads((new / "job.json").read_text())
    assert new_job["method"] == "supervised" and new_job["config"]["epochs"] == 2
    assert "--config" in new_job["argv"] and (out / "retrain-config.json").exists()

    # export: refined labels of the selected case as an nnU-Net-style dataset
    t.selectRow(0)
    panel.ui.exportPathLineEdit.setText(str(tmp_path / "export"))
    panel.ui.exportFormatComboBox.setCurrentText("nnunet")
    panel.ui.exportScopeComboBox.setCurrentText("selected case")
    assert panel.export()
    assert wait_until(app, lambda: "Exported" in panel.ui.messageLabel.text())
    argv = json.loads((tmp_path / "export" / "export.json").read_text())["argv"]
    assert argv == ["export", str(cohort), "--out", str(tmp_path / "export"), "--format", "nnunet",
                    "--cases", panel.current_case, "--labels", "refined"]


def test_cancel_then_resume_and_reopen(app, panel, cohort, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_AESEG_STEP_S", "0.05")
    panel.set_methods(METHODS)
    panel.set_cohort_path(str(cohort))
    panel.form.editors["epochs"].setValue(50)
    out = tmp_path / "jobs" / "long"
    panel.ui.outputPathLineEdit.setText(str(out))
    assert panel.start()
    assert wait_until(app, lambda: panel.watcher.state.epoch is not None)
    assert "Epoch 1/50" in panel.ui.progressLabel.text() and "ETA" in panel.ui.progressLabel.text()
    panel.cancel()
    assert (out / "cancel").exists()
    # the process-finished handler enables Resume: wait for it as well as for the event
    assert wait_until(app, lambda: not panel.job_running() and panel.watcher.state.status == "cancelled"
                      and panel.ui.resumeButton.isEnabled())
    assert "Cancelled" in panel.ui.progressLabel.text()

    # reopening the folder later (another Slicer session) shows the same state
    other = Panel(python=sys.executable, python_path=panel.python_path, log_dir=tmp_path / "logs", poll_ms=20)
    try:
        assert other.open_job(out)
        assert other.watcher.state.status == "cancelled" and other.ui.resumeButton.isEnabled()
        assert not other.ui.startButton.isEnabled() or other.selected_method() is None
    finally:
        other.shutdown()

    monkeypatch.setenv("FAKE_AESEG_STEP_S", "0.0")
    assert panel.resume()
    assert not (out / "cancel").exists()
    assert wait_until(app, lambda: panel.watcher.state.status == "done" and not panel.job_running())
    assert json.loads((out / "job.json").read_text())["resumed"] == 1
    assert panel.watcher.state.starts == 2


def test_open_job_errors_and_foreign_running_job(app, panel, tmp_path):
    assert not panel.open_job(tmp_path / "nope")
    assert "Not a job folder" in panel.ui.messageLabel.text()
    job = tmp_path / "foreign"
    job.mkdir()
    (job / "events.jsonl").write_text(json.dumps({"type": "start", "epochs": 4}) + "\n"
                                      + json.dumps({"type": "progress", "epoch": 2, "epochs": 4, "step": 1,
                                                    "steps": 2}) + "\n")
    assert panel.open_job(job)
    assert "started outside this panel" in panel.ui.progressLabel.text()
    assert panel.ui.cancelButton.isEnabled() and not panel.ui.resumeButton.isEnabled()
    panel.cancel()
    assert (job / "cancel").exists()
    panel.stale_after_s = 0.0  # silent for longer than that: probably dead
    time.sleep(0.01)
    panel._tick()
    assert "may have stopped" in panel.ui.progressLabel.text()


def _distinct_colours(png_path):
    from PySide6.QtGui import QImage

    img = QImage(str(png_path))
    colours = set()
    for y in range(0, img.height(), 2):
        for x in range(0, img.width(), 2):
            colours.add(img.pixel(x, y))
    return img, colours


def test_panel_renders_offscreen_to_png(app, panel, cohort, tmp_path):
    """The screenshot in Resources/Screenshots/panel.png (AESEG_UPDATE_SCREENSHOT=1 refreshes it)."""
    panel.set_cohort_path(str(cohort))
    panel.set_methods(METHODS)
    panel.set_devices({"cuda": False, "devices": ["cpu"], "default": "cpu"})
    panel.set_validation({
        "cohort": str(cohort), "ok": True,
        "summary": {"cases": 24, "splits": {"train": 18, "val": 3, "test": 3},
                    "label_kinds": {"clean": 6, "noisy": 18, "none": 0}, "presence": {"present": 0, "absent": 0},
                    "aux_masks": 0, "dims": "3D"},
        "cases": [], "problems": [{"file": str(cohort / "noisy_labels" / "c07.nii.gz"),
                                   "message": "label has 3 values, using 1 as foreground",
                                   "fix": "set label_value in cohort.csv", "severity": "warning"}],
        "methods": [{"name": "aide", "supported": True, "reason": ""},
                    {"name": "supervised", "supported": True, "reason": ""},
                    {"name": "mean_teacher", "supported": False, "reason": "needs unlabelled cases (found 0)"},
                    {"name": "shape_prior_gan", "title": "Shape prior GAN", "supported": False,
                     "reason": "needs auxiliary masks in aux_masks/"}]})
    combo = panel.ui.methodComboBox
    combo.setCurrentIndex(combo.findData("aide"))
    assert panel.selected_method() == "aide" and "correction_start" in panel.form.editors
    job = tmp_path / "cohort_jobs" / "aide-demo"
    job.mkdir(parents=True)
    (job / "job.json").write_text(json.dumps({"method": "aide", "cohort": str(cohort), "config": {}}))
    ev = [{"type": "start", "epochs": 40}]
    for e in range(1, 41):
        ev.append({"type": "progress", "epoch": e, "epochs": 40, "step": 30, "steps": 30,
                   "losses": {"loss": round(0.9 / e ** 0.5, 3), "dice": round(0.8 / e ** 0.5, 3)}, "eta_s": 0})
        ev.append({"type": "epoch", "epoch": e, "val_dice": round(0.55 + 0.32 * (1 - 1 / e), 3)})
    ev += [{"type": "artifact", "path": "quality.csv", "kind": "quality"}, {"type": "done"}]
    (job / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in ev))
    rows = ["case,method,score,flag,rank,aide_corrections,aide_dice_change"]
    for i, (c, s, f) in enumerate([("c07", 0.31, "true"), ("c12", 0.44, "true"), ("c03", 0.58, "true"),
                                   ("c19", 0.71, "false"), ("c01", 0.83, "false"), ("c22", 0.9, "false")]):
        rows.append(f"{c},aide,{s},{f},{i + 1},{12 - 2 * i},{0.21 - 0.04 * i:.2f}")
    (job / "quality.csv").write_text("\n".join(rows) + "\n")
    (job / "report").mkdir()
    (job / "report" / "report.html").write_text("<html></html>")
    assert panel.open_job(job)
    assert panel.ui.reportButton.isEnabled()
    panel.next_flagged()
    panel.mark_reviewed("c07", cohort / "refined" / "c07.seg.nrrd")
    panel.next_flagged()
    panel.ui.exportPathLineEdit.setText(str(tmp_path / "export"))
    panel.show_message("Accepted c07 → refined/c07.seg.nrrd (earlier version kept)", "ok")

    root = panel.root
    root.show()
    root.resize(460, root.sizeHint().height())
    app.processEvents()
    png = tmp_path / "panel.png"
    panel.save_screenshot(png)
    img, colours = _distinct_colours(png)
    assert img.width() >= 400 and img.height() > 900
    assert len(colours) > 40, f"only {len(colours)} colours: the panel did not render"
    if os.environ.get("AESEG_UPDATE_SCREENSHOT"):
        dest = ROOT / "Resources" / "Screenshots" / "panel.png"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, dest)


def test_apply_the_model_of_a_real_job_to_the_shown_volume(app, cli_job, tiny_cohort, tmp_path):
    """Against the real core: the shown volume is segmented by the open job's model in the
    background, the segmentation is handed to the module, and the working folder goes."""
    import numpy as np

    from aeseg.cohort import load_cohort, read_image, read_label

    logs = tmp_path / "logs"
    p = Panel(python=sys.executable, python_path=[str(ROOT / "AnnotationEfficientSeg")], log_dir=logs, poll_ms=20)
    try:
        assert not p.ui.applyModelButton.isEnabled()
        assert not p.apply_model() and "Open a finished job first" in p.ui.messageLabel.text()
        assert p.open_job(cli_job) and p.ui.applyModelButton.isEnabled()
        # outside Slicer nothing is shown: a clear message and no working folder left behind
        assert not p.apply_model() and "no volume to segment" in p.ui.messageLabel.text()
        assert list(logs.glob("predict-*")) == []

        def full_disk(folder):
            raise OSError(28, "No space left on device")

        p.volume_to_predict = full_disk
        assert not p.apply_model() and "the volume could not be written (OSError" in p.ui.messageLabel.text()
        assert list(logs.glob("predict-*")) == []

        image = next(c.image for c in load_cohort(tiny_cohort).cases if c.split == "test")
        case = image.name.split(".")[0]

        def shown(folder):
            shutil.copy(image, folder / image.name)
            return str(folder / image.name), "CT one"

        p.volume_to_predict = shown
        ready = []
        p.predictionReady.connect(lambda path, name: ready.append((path, name, read_label(path))))
        assert p.apply_model()
        assert not p.ui.applyModelButton.isEnabled()  # one at a time
        assert "Segmenting CT one with the model of job in the background" in p.ui.messageLabel.text()
        assert wait_until(app, lambda: ready, timeout=180), p.ui.messageLabel.text()
        path, name, (mask, geometry) = ready[0]
        assert name == "CT one" and "Segmented CT one" in p.ui.messageLabel.text()
        np.testing.assert_allclose(geometry.ijk_to_lps(), read_image(image).geometry.ijk_to_lps(), atol=1e-4)
        own, _ = read_label(cli_job / "pseudo_labels" / f"{case}.seg.nrrd")  # the job's prediction of the case
        np.testing.assert_array_equal(mask, own)
        assert not Path(path).exists() and list(logs.glob("predict-*")) == []
        assert p.ui.applyModelButton.isEnabled()

        # a broken model: the command's error is shown, nothing is handed over
        broken = tmp_path / "broken"
        shutil.copytree(cli_job, broken)
        (broken / "model" / "model.pt").write_bytes(b"not a model")
        assert p.open_job(broken) and p.apply_model()
        assert wait_until(app, lambda: "Applying the model failed" in p.ui.messageLabel.text(), timeout=180)
        assert "model.pt: not a model of this supervised job" in p.ui.messageLabel.text()
        assert len(ready) == 1 and list(logs.glob("predict-*")) == []
    finally:
        p.shutdown()
        p.root.deleteLater()
