"""The module panel without MRML: cohort, method, training, review queue, export, applying a model.

:class:`Panel` drives the widgets of ``Resources/UI/AnnotationEfficientSeg.ui`` (loaded by
Slicer's ``loadUI`` inside Slicer, by QUiLoader in tests). Every ``aeseg`` command runs as
a background process polled by one QTimer, so Slicer never waits on it; there is no loop
calling ``processEvents``.

The Slicer module adds what needs MRML by connecting to the panel's signals
(:attr:`Panel.caseSelected`, :attr:`Panel.mapSelected`, :attr:`Panel.acceptRequested`,
:attr:`Panel.editRequested`, :attr:`Panel.predictionReady`) and by setting
:attr:`Panel.preflight` (dependency install) and :attr:`Panel.volume_to_predict` (writes
the shown volume to a file for ``aeseg predict``).
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from . import process as proc_lib
from . import qt_shim as q
from .events import CANCELLED, DONE, ERROR, FINISHED, RUNNING, JobWatcher, format_duration
from .forms import FormError, MethodForm
from .review import CaseFiles, ReviewQueue, ReviewRow, case_files, format_value, read_job_json

UI_FILE = Path(__file__).resolve().parent.parent / "Resources" / "UI" / "AnnotationEfficientSeg.ui"

COLOURS = {
    "ok": "#1e8449",
    "error": "#c0392b",
    "warning": "#b9770e",
    "info": "#2c3e50",
    "muted": "#7f8c8d",
    "flag_bg": "#f5b7b1",
    "reviewed_bg": "#abebc6",
}


class _UI:
    """Widgets by objectName, as attributes (like ``slicer.util.childWidgetVariables``)."""

    def __init__(self, root: Any) -> None:
        self.__dict__.update(q.find_children_by_name(root))


def _esc(s: Any) -> str:
    return html.escape(str(s), quote=False)


def _span(text: str, colour: str, bold: bool = False) -> str:
    weight = "font-weight:bold;" if bold else ""
    return f'<span style="color:{COLOURS.get(colour, colour)};{weight}">{text}</span>'


class Panel:
    """The panel's behaviour on top of its widgets. ``python`` runs ``-m aeseg``;
    ``python_path`` is prepended to the children's PYTHONPATH (the folder holding ``aeseg``)."""

    def __init__(
        self,
        root: Any = None,
        *,
        python: str | None = None,
        python_path: list[str] | tuple = (),
        log_dir: str | os.PathLike | None = None,
        poll_ms: int = 300,
    ) -> None:
        self.root = root if root is not None else q.load_ui(str(UI_FILE))
        self.ui = _UI(self.root)
        self.python = python or sys.executable
        self.python_path = [str(p) for p in python_path]
        self.log_dir = Path(log_dir) if log_dir else Path(tempfile.gettempdir()) / "aeseg-slicer-logs"
        self.cancel_grace_s = 60.0
        self.cancel_term_s = 10.0
        self.stale_after_s = 600.0  # a foreign "running" job silent this long has probably died

        # what the core told us
        self.validation: dict | None = None
        self.validated_cohort: str | None = None
        self.methods: list[dict] = []
        self.devices: dict | None = None
        # the open job
        self.job_dir: Path | None = None
        self.job: dict = {}
        self.watcher: JobWatcher | None = None
        self.job_process: proc_lib.ManagedProcess | None = None
        self.queue: ReviewQueue | None = None
        self.current_case: str | None = None
        self._quality_mtime: float | None = None
        self._announced_end = False
        # method forms
        self.form: MethodForm | None = None
        self._configs: dict[str, dict] = {}  # method → last values the user set
        self._form_method: str | None = None
        self._output_auto = True
        self._filling_table = False
        self._commands: list[tuple[proc_lib.ManagedProcess, Callable[[Any], None], str]] = []

        # hooks and signals for the Slicer module
        # called before running aeseg with "validate", "validate-auto", "methods", "devices", "train" or
        # "export"; returns False to stop (the "-auto", methods and devices calls are not the user's)
        self.preflight: Callable[[str], bool] = lambda action: True
        # opens a local file in the desktop's default application (the report in a web browser)
        self.open_url: Callable[[str], bool] = lambda path: bool(q.QDesktopServices.openUrl(q.QUrl.fromLocalFile(path)))
        # writes the volume to segment into the given folder and returns (image file, its display name);
        # raises ValueError with what the user should do when there is nothing to segment
        self.volume_to_predict: Callable[[Path], tuple[str, str]] = _no_volume
        self.caseSelected = q.PySignal()  # (CaseFiles, ReviewRow)
        self.mapSelected = q.PySignal()  # (case, map name or None, path or None)
        self.acceptRequested = q.PySignal()  # (case)
        self.editRequested = q.PySignal()  # (case)
        self.jobFinished = q.PySignal()  # (status)
        self.stateChanged = q.PySignal()  # method, device or config changed
        self.messageShown = q.PySignal()  # (text, level)
        self.predictionReady = q.PySignal()  # (segmentation file, volume name): load it, then it is deleted

        self.timer = q.QTimer()
        self.timer.setInterval(int(poll_ms))
        self.timer.timeout.connect(self._tick)
        self._setup_widgets()
        self._connect()
        self._update_buttons()

    # ------------------------------------------------------------------ setup

    def _setup_widgets(self) -> None:
        ui = self.ui
        ui.dependencyWidget.setVisible(False)
        ui.methodComboBox.setSizeAdjustPolicy(q.QComboBox.AdjustToMinimumContentsLengthWithIcon)
        ui.deviceComboBox.clear()
        ui.deviceComboBox.addItem("auto", "auto")
        ui.mapComboBox.clear()
        ui.mapComboBox.addItem("none")
        t = ui.reviewTable
        t.setSelectionBehavior(q.QAbstractItemView.SelectRows)
        t.setSelectionMode(q.QAbstractItemView.SingleSelection)
        t.setEditTriggers(q.QAbstractItemView.NoEditTriggers)
        t.verticalHeader().setVisible(False)
        t.horizontalHeader().setStretchLastSection(True)
        ui.progressBar.setRange(0, 1000)
        ui.progressBar.setValue(0)
        ui.logTextEdit.setMaximumBlockCount(500)
        self._set_progress_text("Not started", "muted")

    def _connect(self) -> None:
        ui = self.ui
        ui.validateButton.clicked.connect(lambda *a: self.validate())
        ui.cohortBrowseButton.clicked.connect(lambda *a: self._browse(ui.cohortPathLineEdit, "Choose the cohort folder"))
        ui.outputBrowseButton.clicked.connect(lambda *a: self._browse(ui.outputPathLineEdit, "Choose the job folder"))
        ui.jobBrowseButton.clicked.connect(lambda *a: self._browse(ui.jobPathLineEdit, "Choose a job folder", then=self.open_job))
        ui.exportBrowseButton.clicked.connect(lambda *a: self._browse(ui.exportPathLineEdit, "Choose the export folder"))
        ui.methodComboBox.currentIndexChanged.connect(lambda *a: self._on_method_changed())
        ui.deviceComboBox.currentIndexChanged.connect(lambda *a: self.stateChanged.emit())
        ui.resetConfigButton.clicked.connect(lambda *a: self._reset_config())
        ui.outputPathLineEdit.textEdited.connect(lambda *a: setattr(self, "_output_auto", False))
        ui.startButton.clicked.connect(lambda *a: self.start())
        ui.cancelButton.clicked.connect(lambda *a: self.cancel())
        ui.resumeButton.clicked.connect(lambda *a: self.resume())
        ui.openJobButton.clicked.connect(lambda *a: self.open_job())
        ui.reportButton.clicked.connect(lambda *a: self.open_report())
        ui.reviewTable.itemSelectionChanged.connect(self._on_selection_changed)
        ui.nextFlaggedButton.clicked.connect(lambda *a: self.next_flagged())
        ui.acceptButton.clicked.connect(lambda *a: self._request("accept"))
        ui.editButton.clicked.connect(lambda *a: self._request("edit"))
        ui.mapComboBox.currentIndexChanged.connect(lambda *a: self._on_map_changed())
        ui.retrainButton.clicked.connect(lambda *a: self.retrain())
        ui.exportButton.clicked.connect(lambda *a: self.export())
        ui.applyModelButton.clicked.connect(lambda *a: self.apply_model())
        ui.cohortPathLineEdit.textChanged.connect(lambda *a: (self._maybe_suggest_output(), self._update_buttons()))
        ui.exportLabelsComboBox.currentIndexChanged.connect(lambda *a: self._update_buttons())

    def _browse(self, line_edit: Any, caption: str, then: Callable[[], Any] | None = None) -> None:
        start = str(q.qget(line_edit, "text")) or str(Path.home())
        path = q.QFileDialog.getExistingDirectory(self.root, caption, start)
        if path:
            line_edit.setText(str(path))
            if then is not None:
                then()

    # ------------------------------------------------------------------ messages

    def show_message(self, text: str, level: str = "info") -> None:
        """A one-line status under the panel (and to the module, which may show a dialog for errors)."""
        self.ui.messageLabel.setText(_span(_esc(text).replace("\n", "<br>"), level, bold=level == "error"))
        self.log(text)
        self.messageShown.emit(text, level)

    def log(self, text: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        for line in str(text).splitlines() or [""]:
            self.ui.logTextEdit.appendPlainText(f"{stamp}  {line}")

    def _set_progress_text(self, text: str, level: str = "info") -> None:
        self.ui.progressLabel.setText(text)
        self.ui.progressLabel.setStyleSheet(f"color: {COLOURS.get(level, level)};")

    # ------------------------------------------------------------------ paths

    @property
    def cohort_path(self) -> str:
        return str(q.qget(self.ui.cohortPathLineEdit, "text")).strip()

    @property
    def output_path(self) -> str:
        return str(q.qget(self.ui.outputPathLineEdit, "text")).strip()

    def set_cohort_path(self, path: str) -> None:
        self.ui.cohortPathLineEdit.setText(str(path))

    def suggest_output(self) -> str | None:
        """``<cohort>_jobs/<method>-<timestamp>`` beside the cohort folder."""
        cohort, method = self.cohort_path, self.selected_method()
        if not cohort or not method:
            return None
        c = Path(cohort)
        return str(c.parent / f"{c.name}_jobs" / f"{method}-{time.strftime('%Y%m%d-%H%M%S')}")

    # ------------------------------------------------------------------ async aeseg commands

    def _env(self) -> dict:
        return proc_lib.child_env(self.python_path)

    def run_async(self, args: list[str], on_done: Callable[[Any], None], name: str = "aeseg",
                  ok_codes: tuple = (0,), json_output: bool = True) -> proc_lib.ManagedProcess:
        """Run ``python -m aeseg ARGS`` in the background; ``on_done`` gets its JSON (or the exception)."""
        cmd = proc_lib.aeseg_command(self.python, *args)
        p = proc_lib.ManagedProcess(cmd, env=self._env(), log_dir=self.log_dir, name=name).start()

        def finish(result: proc_lib.ProcessResult) -> None:
            try:
                value: Any = proc_lib.parse_json_output(result, ok_codes) if json_output else result
            except Exception as e:  # noqa: BLE001 - handed to the callback
                value = e
            on_done(value)

        self._commands.append((p, finish, name))
        self._ensure_timer()
        return p

    def busy(self) -> bool:
        return bool(self._commands)

    def _ensure_timer(self) -> None:
        if not q.qget(self.timer, "active"):
            self.timer.start()

    # ------------------------------------------------------------------ cohort

    def refresh_methods(self) -> None:
        if not self.preflight("methods"):
            return
        self.run_async(proc_lib.methods_args(), self._on_methods, "methods")

    def refresh_devices(self) -> None:
        if not self.preflight("devices"):
            return
        self.run_async(proc_lib.devices_args(), self._on_devices, "devices")

    def _on_methods(self, data: Any) -> None:
        if isinstance(data, Exception):
            self.show_message(f"Could not list the methods: {data}", "error")
            return
        self.set_methods(data)

    def _on_devices(self, data: Any) -> None:
        if isinstance(data, Exception):
            self.ui.deviceLabel.setText(_span("device check failed", "warning"))
            self.log(f"aeseg devices failed: {data}")
            return
        self.set_devices(data)

    def validate(self, cohort: str | None = None, auto: bool = False) -> None:
        """Run ``aeseg validate COHORT --json`` in the background and show the result.

        ``auto``: not asked for by the user (opening a job), so :attr:`preflight` gets
        ``"validate-auto"`` and should not prompt for anything.
        """
        cohort = cohort or self.cohort_path
        if not cohort:
            self.show_message("Choose a cohort folder first.", "warning")
            return
        if not Path(cohort).is_dir():
            self.show_message(f"The cohort folder does not exist: {cohort}", "error")
            return
        if not self.preflight("validate-auto" if auto else "validate"):
            return
        self.ui.cohortSummaryLabel.setText(_span("Validating…", "muted"))
        self.ui.cohortProblemsLabel.setText("")
        self.ui.validateButton.setEnabled(False)
        if not self.methods:
            self.refresh_methods()
        if self.devices is None:
            self.refresh_devices()

        def done(data: Any) -> None:
            self.ui.validateButton.setEnabled(True)
            if isinstance(data, Exception):
                self.ui.cohortSummaryLabel.setText(_span("Validation failed to run.", "error", True))
                self.show_message(f"aeseg validate failed: {data}", "error")
                return
            self.set_validation(data)

        self.run_async(proc_lib.validate_args(cohort), done, "validate", ok_codes=(0, 1))

    def set_validation(self, data: dict) -> None:
        """Show ``aeseg validate --json`` output: summary, problems, and which methods are possible."""
        self.validation = data
        self.validated_cohort = data.get("cohort") or self.cohort_path
        s = data.get("summary") or {}
        ok = bool(data.get("ok"))
        problems = data.get("problems") or []
        n_err = sum(p.get("severity") == "error" for p in problems)
        n_warn = len(problems) - n_err
        status = _span("✔ Ready", "ok", True) if ok else _span(f"✘ {n_err} problem{'s' * (n_err != 1)} to fix", "error", True)
        if n_warn:
            status += " " + _span(f"· {n_warn} warning{'s' * (n_warn != 1)}", "warning")
        lines = [f"{status} — <b>{s.get('cases', 0)} cases</b> ({_esc(s.get('dims', '?'))})"]
        splits = s.get("splits") or {}
        if splits:
            lines.append("Splits: " + ", ".join(f"{_esc(k)} {v}" for k, v in splits.items()))
        kinds = s.get("label_kinds") or {}
        if kinds:
            lines.append("Labels: " + ", ".join(f"{v} {_esc(k)}" for k, v in kinds.items()))
        pres = s.get("presence") or {}
        if any(pres.values()):
            lines.append("Presence: " + ", ".join(f"{v} {_esc(k)}" for k, v in pres.items()))
        if s.get("aux_masks"):
            lines.append(f"Auxiliary masks: {s['aux_masks']}")
        refined = sum(1 for c in data.get("cases") or [] if c.get("refined"))
        if refined:
            lines.append(f"Refined (accepted) labels: {refined}")
        self.ui.cohortSummaryLabel.setText("<br>".join(lines))
        plines = []
        for p in problems[:8]:
            sev = p.get("severity", "error")
            where = f"<i>{_esc(Path(str(p.get('file', ''))).name)}</i>: " if p.get("file") else ""
            fix = f" — {_esc(p['fix'])}" if p.get("fix") else ""
            plines.append(_span("●", sev) + f" {where}{_esc(p.get('message', ''))}{fix}")
        if len(problems) > 8:
            plines.append(_span(f"… and {len(problems) - 8} more (run aeseg validate in a terminal)", "muted"))
        self.ui.cohortProblemsLabel.setText("<br>".join(plines))
        if self.queue is not None and len(self.queue):
            self._fill_table()  # the "refined" marks come from the validation
        self._rebuild_method_combo()
        self._update_buttons()

    # ------------------------------------------------------------------ methods

    def set_methods(self, methods: list[dict]) -> None:
        """The method list of ``aeseg methods --json`` (each with its config schema)."""
        self.methods = [m for m in methods or [] if isinstance(m, dict) and m.get("name")]
        self._rebuild_method_combo()

    def _availability(self) -> dict[str, tuple[bool, str]]:
        out = {}
        for m in (self.validation or {}).get("methods") or []:
            if m.get("name"):
                out[m["name"]] = (bool(m.get("supported")), str(m.get("reason") or ""))
        return out

    def method_entries(self) -> list[dict]:
        """All known methods with ``supported`` and ``reason`` (supported first, then in core order)."""
        avail = self._availability()
        entries: list[dict] = []
        seen = set()
        for m in self.methods:
            sup, reason = avail.get(m["name"], (self.validation is None, ""))
            entries.append({**m, "supported": sup, "reason": reason})
            seen.add(m["name"])
        for m in (self.validation or {}).get("methods") or []:
            if m.get("name") and m["name"] not in seen:
                entries.append({"name": m["name"], "title": m.get("title", m["name"]), "config": None,
                                "supported": bool(m.get("supported")), "reason": str(m.get("reason") or "")})
        entries.sort(key=lambda e: not e["supported"])
        return entries

    def _rebuild_method_combo(self) -> None:
        combo = self.ui.methodComboBox
        previous = self.selected_method() or self._form_method
        entries = self.method_entries()
        combo.blockSignals(True)
        combo.clear()
        for i, e in enumerate(entries):
            title = e.get("title") or e["name"]
            combo.addItem(title if e["supported"] else f"{title}  (unavailable)", e["name"])
            tip = e.get("description") or ""
            if e.get("needs"):
                tip += ("\n" if tip else "") + f"Needs: {e['needs']}"
            if not e["supported"] and e["reason"]:
                tip += ("\n" if tip else "") + f"Unavailable: {e['reason']}"
            combo.setItemData(i, tip, q.Qt.ToolTipRole)
            if not e["supported"]:
                combo.setItemData(i, 0, q.ITEM_FLAGS_ROLE)  # greyed out, not selectable
        target = next((i for i, e in enumerate(entries) if e["name"] == previous and e["supported"]), None)
        if target is None:
            target = next((i for i, e in enumerate(entries) if e["supported"]), -1)
        combo.setCurrentIndex(target)
        combo.blockSignals(False)
        unavailable = [e for e in entries if not e["supported"]]
        if unavailable and self.validation is not None:
            items = "".join(f"<br>• <b>{_esc(e.get('title') or e['name'])}</b>: {_esc(e['reason'] or 'not supported')}"
                            for e in unavailable)
            self.ui.methodUnavailableLabel.setText(_span("Not available for this cohort:", "muted") + items)
        else:
            self.ui.methodUnavailableLabel.setText("")
        self._on_method_changed()

    def selected_method(self) -> str | None:
        combo = self.ui.methodComboBox
        i = int(q.qget(combo, "currentIndex"))
        if i < 0:
            return None
        data = combo.itemData(i)
        return str(data) if data else None

    def method_info(self, name: str | None) -> dict | None:
        return next((m for m in self.method_entries() if m["name"] == name), None)

    def _on_method_changed(self) -> None:
        name = self.selected_method()
        if self.form is not None and self._form_method:
            try:
                self._configs[self._form_method] = self.form.values()
            except FormError:
                pass
        if name == self._form_method and self.form is not None:
            self._maybe_suggest_output()
            self._update_buttons()
            return
        self._clear_form()
        info = self.method_info(name)
        self._form_method = name
        if info is None:
            self.ui.methodDescriptionLabel.setText(
                _span("Validate a cohort to see the methods.", "muted") if not self.methods else "")
            self._update_buttons()
            self.stateChanged.emit()
            return
        desc = _esc(info.get("description") or "")
        if info.get("needs"):
            desc += ("<br>" if desc else "") + _span(f"Needs: {_esc(info['needs'])}", "muted")
        self.ui.methodDescriptionLabel.setText(desc)
        if info.get("config") is not None:
            self.form = MethodForm(info["config"])
            self.ui.methodFormContainer.layout().addWidget(self.form.widget)
            saved = self._configs.get(name)
            if saved:
                try:
                    self.form.set_values(saved)
                except FormError:
                    self.form.reset()
            self.form.changed.connect(self._on_form_changed)
        self._maybe_suggest_output()
        self._update_buttons()
        self.stateChanged.emit()

    def _maybe_suggest_output(self) -> None:
        """Fill the job folder from cohort and method unless the user typed one."""
        if self._output_auto:
            suggestion = self.suggest_output()
            if suggestion:
                self.ui.outputPathLineEdit.setText(suggestion)

    def _clear_form(self) -> None:
        if self.form is not None:
            self.form.changed.disconnect()
            self.ui.methodFormContainer.layout().removeWidget(self.form.widget)
            self.form.widget.setParent(None)
            self.form.widget.deleteLater()
            self.form = None

    def _on_form_changed(self) -> None:
        self._update_buttons()
        self.stateChanged.emit()

    def _reset_config(self) -> None:
        if self.form is not None:
            self.form.reset()
            self._configs.pop(self._form_method or "", None)

    # ------------------------------------------------------------------ devices

    def set_devices(self, data: dict) -> None:
        """``aeseg devices --json``: list them, select the default, say whether a GPU was found."""
        self.devices = data
        combo = self.ui.deviceComboBox
        previous = self.selected_device()
        devices = [str(d) for d in data.get("devices") or ["cpu"]]
        n_cuda = sum(d.startswith("cuda") for d in devices)
        combo.blockSignals(True)
        combo.clear()
        for d in devices:
            arg = "cuda" if (d.startswith("cuda") and n_cuda == 1) else d
            combo.addItem(f"{d} (GPU)" if d.startswith("cuda") else d, arg)
        default = str(data.get("default") or devices[0])
        pick = previous if previous in devices or previous == "cuda" else default
        idx = next((i for i, d in enumerate(devices) if d == pick or (pick == "cuda" and d.startswith("cuda"))), 0)
        combo.setCurrentIndex(idx)
        combo.blockSignals(False)
        if data.get("cuda"):
            self.ui.deviceLabel.setText(_span("GPU found", "ok", True))
        else:
            self.ui.deviceLabel.setText(_span("No GPU found: training runs on the CPU (slower)", "warning"))
        self.stateChanged.emit()

    def selected_device(self) -> str | None:
        combo = self.ui.deviceComboBox
        i = int(q.qget(combo, "currentIndex"))
        return str(combo.itemData(i)) if i >= 0 and combo.itemData(i) else None

    # ------------------------------------------------------------------ module state (parameter node)

    def get_state(self) -> dict:
        configs = dict(self._configs)
        if self.form is not None and self._form_method:
            try:
                configs[self._form_method] = self.form.values()
            except FormError:
                pass
        return {"method": self.selected_method() or "", "device": self.selected_device() or "", "configs": configs}

    def set_state(self, state: dict) -> None:
        self._configs.update({k: dict(v) for k, v in (state.get("configs") or {}).items() if isinstance(v, dict)})
        method = state.get("method")
        if method:
            combo = self.ui.methodComboBox
            for i in range(int(q.qget(combo, "count"))):
                if combo.itemData(i) == method:
                    combo.setCurrentIndex(i)
                    break
        if method and method == self._form_method and self.form is not None and method in self._configs:
            try:
                self.form.set_values(self._configs[method])
            except FormError:
                pass
        dev = state.get("device")
        if dev:
            combo = self.ui.deviceComboBox
            for i in range(int(q.qget(combo, "count"))):
                if combo.itemData(i) == dev:
                    combo.setCurrentIndex(i)
                    break

    # ------------------------------------------------------------------ training

    def job_running(self) -> bool:
        return self.job_process is not None and self.job_process.poll() is None

    def train_command(self) -> list[str]:
        """The ``aeseg train`` command for the panel's current choices; ValueError says what is missing."""
        cohort, method, out = self.cohort_path, self.selected_method(), self.output_path
        problems = []
        if not cohort:
            problems.append("choose a cohort folder")
        if not method:
            problems.append("choose a method (validate the cohort to see which are possible)")
        else:
            info = self.method_info(method)
            if info is not None and not info["supported"]:
                problems.append(f"{info.get('title') or method} is not available: {info['reason']}")
        if not out:
            problems.append("choose a job folder")
        elif Path(out).exists() and any(Path(out).iterdir()):
            problems.append(f"the job folder is not empty: {out} (open it in Review, or choose another)")
        sets: list[str] = []
        if self.form is not None:
            try:
                sets = self.form.set_args(only_changed=True)
            except FormError as e:
                problems.append(f"fix the parameters: {e}")
        try:
            sets += self.engine_set_args()
        except ValueError as e:
            problems.append(str(e))
        if problems:
            raise ValueError("; ".join(problems))
        seed = int(q.qget(self.ui.seedSpinBox, "value"))
        args = proc_lib.train_args(cohort, method, out, set_args=sets, device=self.selected_device(), seed=seed)
        return proc_lib.aeseg_command(self.python, *args)

    def engine_set_args(self) -> list[str]:
        """``--set`` for the epochs box (unless the method's own form has ``epochs``) and "More settings"."""
        args: list[str] = []
        epochs = int(q.qget(self.ui.epochsSpinBox, "value"))
        if epochs > 0 and not self._form_has("epochs"):
            args += ["--set", f"epochs={epochs}"]
        for item in str(q.qget(self.ui.extraSetsLineEdit, "text")).split():
            key, sep, value = item.partition("=")
            if not sep or not key.strip() or not value.strip():
                raise ValueError(f"'More settings' needs key=value items, not {item!r}")
            args += ["--set", f"{key.strip()}={value.strip()}"]
        return args

    def _form_has(self, name: str) -> bool:
        return self.form is not None and any(s.name == name for s in self.form.specs)

    def start(self) -> bool:
        if self.job_running():
            self.show_message("A job is already running: cancel it first.", "warning")
            return False
        try:
            cmd = self.train_command()
        except ValueError as e:
            self.show_message(f"Cannot start: {e}.", "error")
            return False
        if not self.preflight("train"):
            return False
        out = self.output_path
        return self._launch(cmd, Path(out), f"Started {self.selected_method()} → {out}")

    def _launch(self, cmd: list[str], job_dir: Path, message: str) -> bool:
        p = proc_lib.ManagedProcess(cmd, env=self._env(), job_dir=job_dir, log_dir=self.log_dir, name="train")
        try:
            p.start()
        except OSError as e:
            self.show_message(f"Could not start {cmd[0]}: {e}", "error")
            return False
        self.log(" ".join(cmd))
        self.open_job(job_dir, process=p)
        self._output_auto = True
        self.show_message(message, "info")
        return True

    def cancel(self) -> None:
        """Graceful first (cancel file), then SIGTERM, then kill the process tree (see process.py)."""
        if self.job_running():
            assert self.job_process is not None
            self.job_process.request_cancel(self.cancel_grace_s, self.cancel_term_s)
            self._set_progress_text("Cancelling: waiting for the current step to finish and save…", "warning")
            self.show_message("Cancel requested.", "warning")
        elif self.job_dir is not None and self._watching_live():
            proc_lib.write_cancel_file(self.job_dir)
            self.show_message("Cancel requested (the job was started elsewhere: it stops after its current step).",
                              "warning")
        self._update_buttons()

    def can_resume(self) -> bool:
        if self.job_dir is None or self.job_running() or not (self.job_dir / "job.json").exists():
            return False
        status = self.watcher.state.status if self.watcher else None
        return status in (CANCELLED, ERROR) or (status == RUNNING and self._stale())

    def resume(self) -> bool:
        if not self.can_resume():
            self.show_message("Open a cancelled or failed job to resume it.", "warning")
            return False
        if not self.preflight("train"):
            return False
        assert self.job_dir is not None
        proc_lib.clear_cancel_file(self.job_dir)
        cmd = proc_lib.aeseg_command(self.python, *proc_lib.resume_args(self.job_dir))
        return self._launch(cmd, self.job_dir, f"Resuming {self.job_dir.name}")

    def retrain(self) -> bool:
        """A new job: same cohort, method, config, seed and device as the open one; refined labels count as clean."""
        if self.job_dir is not None:
            self.job = read_job_json(self.job_dir)
        if self.job_dir is None or not self.job:
            self.show_message("Open a finished job first.", "warning")
            return False
        if self.job_running():
            self.show_message("A job is running: wait for it or cancel it.", "warning")
            return False
        method, cohort = self.job.get("method"), self.job.get("cohort")
        if not method or not cohort:
            self.show_message("job.json does not name its method and cohort.", "error")
            return False
        if not self.preflight("train"):
            return False
        out = _unique_sibling(self.job_dir, "retrain")
        config_file = None
        if isinstance(self.job.get("config"), dict):
            config_file = self.job_dir / "retrain-config.json"
            config_file.write_text(json.dumps(self.job["config"], indent=2) + "\n", encoding="utf-8")
        seed = self.job.get("seed")
        device = self.selected_device() or self.job.get("device")
        args = proc_lib.train_args(cohort, method, out, config_file=config_file, device=device,
                                   seed=int(seed) if isinstance(seed, int) else None)
        refined = Path(cohort) / "refined"
        n = len(list(refined.glob("*.seg.nrrd"))) if refined.is_dir() else 0
        return self._launch(proc_lib.aeseg_command(self.python, *args), out,
                            f"Retraining {method} with {n} refined label{'s' * (n != 1)} → {out}")

    # ------------------------------------------------------------------ job folder

    def open_job(self, job_dir: str | os.PathLike | None = None, process: proc_lib.ManagedProcess | None = None) -> bool:
        """Show a job (running, finished or old): its progress and its review queue."""
        text = str(job_dir) if job_dir else str(q.qget(self.ui.jobPathLineEdit, "text")).strip()
        if not text:
            self.show_message("Choose a job folder first.", "warning")
            return False
        path = Path(text)
        if process is None and not (path / "job.json").exists() and not (path / "events.jsonl").exists():
            self.show_message(f"Not a job folder (no job.json or events.jsonl): {path}", "error")
            return False
        if self.job_running() and (process is not None or path != self.job_dir):
            self.show_message("A job is running: wait for it or cancel it before opening another one.", "warning")
            return False
        if process is not None:
            self.job_process = process
        elif not self.job_running():
            self.job_process = None
        self.job_dir = path
        self.ui.jobPathLineEdit.setText(str(path))
        self.job = read_job_json(path)
        self.watcher = JobWatcher(path)
        self.watcher.update(final=process is None)
        self._announced_end = self.watcher.state.status in FINISHED and process is None
        self.queue = None
        self.current_case = None
        self._quality_mtime = None
        self.ui.metricsLabel.setText("")
        cohort = self.job.get("cohort")
        if cohort and cohort != self.cohort_path:
            self.set_cohort_path(cohort)
        if cohort and self.validated_cohort != cohort and Path(cohort).is_dir():
            self.validate(cohort, auto=True)
        self.reload_review()
        self._refresh_progress()
        self._ensure_timer()
        self._update_buttons()
        return True

    def report_path(self) -> Path | None:
        """The open job's ``report/report.html`` once the job has written it, else None."""
        p = self.job_dir / "report" / "report.html" if self.job_dir is not None else None
        return p if p is not None and p.is_file() else None

    def open_report(self) -> bool:
        """Open the job's report (curves, cases in review order, the method's figures) in the browser."""
        path = self.report_path()
        if path is None:
            self.show_message("No report yet: a job writes report/report.html when it finishes.", "warning")
            return False
        if not self.open_url(str(path)):
            self.show_message(f"Could not open {path}: open it in a web browser.", "warning")
            return False
        self.log(f"report opened: {path}")
        return True

    def _tick(self) -> None:
        """Timer: finish short commands, follow the job's events, reload quality.csv when it changes."""
        q.guard_none_refcount()
        for item in list(self._commands):
            p, finish, _ = item
            if p.poll() is not None:
                self._commands.remove(item)
                result = p.result()
                p.cleanup_logs()
                finish(result)
        if self.job_dir is not None and not self.job:
            self.job = read_job_json(self.job_dir)  # a new run writes job.json once it has started
        if self.watcher is not None:
            proc_ended = False
            if self.job_process is not None and self.job_process.poll() is not None:
                proc_ended = True
            events = self.watcher.update(final=proc_ended)
            if proc_ended:
                assert self.job_process is not None
                self.watcher.state.process_exited(int(self.job_process.returncode or 0),
                                                  self.job_process.stderr_tail())
                if self.watcher.state.status == ERROR:
                    tail = self.job_process.stderr_tail(15)
                    if tail:
                        self.log(tail)
                self.job_process = None
            for e in events:
                if e.get("type") == "error":
                    self.log(f"error: {e.get('message')}")
                elif e.get("type") == "note" and e.get("message"):
                    self.log(str(e.get("message")))  # e.g. task standardization, rounds skipped
                elif e.get("type") == "artifact" and e.get("kind") == "report":
                    self.log(f"report: {self.job_dir / str(e.get('path'))}" if self.job_dir else "")
            self._maybe_reload_review()
            self._refresh_progress()
            if self.watcher.state.status in FINISHED and not self._announced_end and self.job_process is None:
                self._announced_end = True
                st = self.watcher.state
                level = {DONE: "ok", CANCELLED: "warning", ERROR: "error"}[st.status]
                self.show_message(st.summary(), level)
                self.jobFinished.emit(st.status)
        self._update_buttons()
        # stop only once a finished process has been handled above (it may end between two checks)
        if not self._commands and self.job_process is None and not self._watching_live():
            self.timer.stop()

    def _watching_live(self) -> bool:
        """A job started elsewhere that still reports progress: keep following it."""
        return self.watcher is not None and self.watcher.state.status == RUNNING and not self._stale()

    def _stale(self) -> bool:
        """A job that says it is running, is not our process and has not written an event for a while."""
        if self.watcher is None or self.job_process is not None or self.watcher.state.status != RUNNING:
            return False
        try:
            age = time.time() - self.watcher.tail.path.stat().st_mtime
        except FileNotFoundError:
            return True
        return age > self.stale_after_s

    def _refresh_progress(self) -> None:
        if self.watcher is None:
            return
        st = self.watcher.state
        bar = self.ui.progressBar
        frac = st.fraction
        if st.status == RUNNING and frac is None:
            bar.setRange(0, 0)  # busy: starting up
        else:
            bar.setRange(0, 1000)
            bar.setValue(int(round((frac or 0.0) * 1000)))
        level = {RUNNING: "info", DONE: "ok", ERROR: "error", CANCELLED: "warning"}.get(st.status, "muted")
        text = st.summary()
        if self.job_process is not None and self.job_process.cancelling and st.status == RUNNING:
            text = "Cancelling… " + text
        elif st.status == RUNNING and self._stale():
            text += "  (no news for a while: the run may have stopped; Resume continues it)"
            level = "warning"
        elif st.status == RUNNING and self.job_process is None:
            text += "  (started outside this panel)"
        self._set_progress_text(text, level)
        if st.history:
            last = st.history[-1]
            parts = [f"{_esc(k.removeprefix('loss:').replace('_', ' '))} {format_value(v)}"
                     for k, v in last.items() if k != "epoch" and v is not None]
            best = [h.get("val_dice") for h in st.history if isinstance(h.get("val_dice"), (int, float))]
            line = f"Last epoch {last.get('epoch')}: " + ", ".join(parts)
            if best:
                line += f"<br>Best val Dice {max(best):.3f}"
            self.ui.metricsLabel.setText(line)

    # ------------------------------------------------------------------ review

    def _maybe_reload_review(self) -> None:
        if self.job_dir is None:
            return
        path = self.job_dir / "quality.csv"
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            return
        if mtime != self._quality_mtime:
            self.reload_review()

    def reload_review(self) -> None:
        """Read quality.csv (and review.json) again, keeping the selected case."""
        if self.job_dir is None:
            return
        path = self.job_dir / "quality.csv"
        try:
            self._quality_mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            self._quality_mtime = None
        try:
            self.queue = ReviewQueue.load(self.job_dir)
        except (OSError, ValueError) as e:
            self.show_message(f"Cannot read quality.csv: {e}", "error")
            self.queue = None
        self._fill_table()

    def _fill_table(self) -> None:
        t = self.ui.reviewTable
        self._filling_table = True
        try:
            t.clearContents()
            if self.queue is None or len(self.queue) == 0:
                t.setRowCount(0)
                t.setColumnCount(0)
                self.ui.reviewCountsLabel.setText(
                    "No job open." if self.job_dir is None else "No quality table yet (it appears when the job has scored the cases).")
                return
            cols = self.queue.columns()
            t.setColumnCount(len(cols))
            t.setHorizontalHeaderLabels([c.replace("_", " ") for c in cols])
            t.setRowCount(len(self.queue))
            for r, row in enumerate(self.queue.rows):
                for c, col in enumerate(cols):
                    t.setItem(r, c, self._cell(row, col))
            t.resizeColumnsToContents()
            self._update_counts()
            idx = self.queue.index(self.current_case)
            if idx is not None:
                t.selectRow(idx)
        finally:
            self._filling_table = False

    def _cell(self, row: ReviewRow, col: str) -> Any:
        value = row.value(col)
        item = q.QTableWidgetItem(format_value(value))
        item.setData(q.Qt.UserRole, row.case)
        if col == "flag" and row.flag:
            item.setText("⚑ flagged")
            item.setBackground(q.QBrush(q.QColor(COLOURS["flag_bg"])))
        elif col == "flag":
            item.setText("")
        if col == "reviewed":
            item.setText("✔" if row.reviewed else ("refined" if row.case in self._refined_cases() else ""))
            if not row.reviewed and row.case in self._refined_cases():
                item.setForeground(q.QBrush(q.QColor(COLOURS["muted"])))
                item.setToolTip("accepted in an earlier review: cohort/refined/ has a label for this case")
            if row.reviewed:
                item.setToolTip(f"accepted {row.reviewed_at or ''}\n{row.refined_path or ''}".strip())
            if row.reviewed:
                item.setBackground(q.QBrush(q.QColor(COLOURS["reviewed_bg"])))
        if col == "score" and row.score is not None:
            item.setToolTip("higher = more trustworthy label")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            item.setTextAlignment(q.Qt.AlignRight | q.Qt.AlignVCenter)
        return item

    def _refined_cases(self) -> set:
        """Cases with an accepted label in the cohort's refined/ folder (from the last validation)."""
        cohort = self.job.get("cohort")
        if not self.validation or (cohort and self.validated_cohort != cohort):
            return set()
        return {c.get("case") for c in self.validation.get("cases") or [] if c.get("refined")}

    def _update_counts(self) -> None:
        if self.queue is None:
            return
        c = self.queue.counts()
        self.ui.reviewCountsLabel.setText(
            f"{c['cases']} cases · {c['flagged']} flagged · {c['reviewed']} reviewed · {c['flagged_left']} flagged left")

    def select_case(self, case: str | None) -> bool:
        """Select ``case`` in the table (which loads it through :attr:`caseSelected`)."""
        if self.queue is None or case is None:
            return False
        idx = self.queue.index(case)
        if idx is None:
            return False
        if case == self.current_case:
            self._emit_case(case)  # reload on purpose
        else:
            self.ui.reviewTable.selectRow(idx)
        return True

    def _on_selection_changed(self) -> None:
        if self._filling_table or self.queue is None:
            return
        t = self.ui.reviewTable
        r = int(q.qget(t, "currentRow"))
        rows = t.selectionModel().selectedRows() if t.selectionModel() is not None else []
        if rows:
            r = int(q.qget(rows[0], "row"))
        if r < 0 or r >= len(self.queue):
            return
        case = self.queue.rows[r].case
        if case != self.current_case:
            self._emit_case(case)

    def _emit_case(self, case: str) -> None:
        assert self.queue is not None
        self.current_case = case
        row = self.queue.row(case)
        files = self.case_files(case)
        combo = self.ui.mapComboBox
        combo.blockSignals(True)
        combo.clear()
        combo.addItem("none")
        for name in files.maps:
            combo.addItem(name)
        combo.blockSignals(False)
        self._update_buttons()
        self.caseSelected.emit(files, row)

    def case_files(self, case: str) -> CaseFiles:
        cohort = self.job.get("cohort") or self.cohort_path or None
        cases = (self.validation or {}).get("cases") if self.validation and (
            self.validated_cohort == cohort or not cohort) else None
        return case_files(self.job_dir, case, cohort=cohort, cohort_cases=cases)

    def next_flagged(self) -> str | None:
        if self.queue is None:
            return None
        case = self.queue.next_flagged(self.current_case)
        if case is None:
            self.show_message("No flagged case left to review.", "ok")
            return None
        self.select_case(case)
        return case

    def _on_map_changed(self) -> None:
        if self.current_case is None:
            return
        name = str(q.qget(self.ui.mapComboBox, "currentText"))
        files = self.case_files(self.current_case)
        path = files.maps.get(name)
        self.mapSelected.emit(self.current_case, name if path else None, path)

    def _request(self, what: str) -> None:
        if self.current_case is None:
            self.show_message("Select a case in the table first.", "warning")
            return
        (self.acceptRequested if what == "accept" else self.editRequested).emit(self.current_case)

    def mark_reviewed(self, case: str, refined_path: str | os.PathLike | None) -> None:
        """Called after a correction was accepted: mark the row and save review.json."""
        if self.queue is None:
            return
        self.queue.mark_reviewed(case, refined_path)
        idx = self.queue.index(case)
        row = self.queue.row(case)
        if idx is not None and row is not None:
            cols = self.queue.columns()
            self._filling_table = True
            try:
                for c, col in enumerate(cols):
                    self.ui.reviewTable.setItem(idx, c, self._cell(row, col))
            finally:
                self._filling_table = False
        self._update_counts()

    # ------------------------------------------------------------------ export

    def export_command(self) -> list[str]:
        labels = str(q.qget(self.ui.exportLabelsComboBox, "currentText"))
        fmt = str(q.qget(self.ui.exportFormatComboBox, "currentText"))
        out = str(q.qget(self.ui.exportPathLineEdit, "text")).strip()
        if not out:
            raise ValueError("choose the export folder")
        if labels == "refined":
            source = self.job.get("cohort") or self.cohort_path
            if not source:
                raise ValueError("choose a cohort folder")
        else:
            if self.job_dir is None:
                raise ValueError(f"open a job to export its {labels.replace('_', ' ')}")
            source = str(self.job_dir)
        cases = None
        if str(q.qget(self.ui.exportScopeComboBox, "currentText")) == "selected case":
            if self.current_case is None:
                raise ValueError("select a case in the table, or export all cases")
            cases = [self.current_case]
        args = proc_lib.export_args(source, out, fmt, cases=cases, labels=labels)
        return proc_lib.aeseg_command(self.python, *args)

    def export(self) -> bool:
        try:
            cmd = self.export_command()
        except ValueError as e:
            self.show_message(f"Cannot export: {e}.", "error")
            return False
        if not self.preflight("export"):
            return False
        out = cmd[cmd.index("--out") + 1]
        self.ui.exportButton.setEnabled(False)

        def done(result: Any) -> None:
            self.ui.exportButton.setEnabled(True)
            if isinstance(result, Exception):
                self.show_message(f"Export failed: {result}", "error")
                return
            if result.returncode != 0:
                tail = "\n".join(result.stderr.strip().splitlines()[-5:])
                self.show_message(f"Export failed (exit {result.returncode}): {tail}", "error")
            else:
                self.show_message(f"Exported to {out}", "ok")
            self._update_buttons()

        self.log(" ".join(cmd))
        self.run_async(cmd[3:], done, "export", json_output=False)
        return True

    # ------------------------------------------------------------------ applying the model

    def model_dir(self) -> Path | None:
        """The open job's ``model/`` folder once training has saved the model, else None."""
        d = self.job_dir / "model" if self.job_dir is not None else None
        return d if d is not None and (d / "model.json").is_file() and (d / "model.pt").is_file() else None

    def apply_model(self) -> bool:
        """Segment the shown volume with the open job's model (``aeseg predict`` in the background).

        :attr:`volume_to_predict` writes the volume into a fresh folder under the log folder;
        when the command has written the segmentation, :attr:`predictionReady` hands it to
        the Slicer module to load, and the folder is deleted.
        """
        if self.model_dir() is None:
            self.show_message("Open a finished job first: its model/ folder holds the model to apply.", "error")
            return False
        if any(n == "predict" for _, _, n in self._commands):
            self.show_message("The model is already being applied: wait for it to finish.", "warning")
            return False
        if not self.preflight("predict"):
            return False
        self.log_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="predict-", dir=self.log_dir))
        try:
            image, name = self.volume_to_predict(work)
        except Exception as e:  # noqa: BLE001 - ValueError says what to do; anything else is a failed write
            shutil.rmtree(work, ignore_errors=True)
            why = str(e) if isinstance(e, ValueError) else f"the volume could not be written ({type(e).__name__}: {e})"
            self.show_message(f"Cannot apply the model: {why}.", "error")
            return False
        job = self.job_dir
        args = proc_lib.predict_args(job, [image], work / "prediction", device=self.selected_device())

        def done(result: Any) -> None:
            try:
                if isinstance(result, Exception):
                    self.show_message(f"Applying the model failed: {result}", "error")
                elif result.returncode != 0:
                    tail = "\n".join(result.stderr.strip().splitlines()[-5:])
                    self.show_message(f"Applying the model failed (exit {result.returncode}): {tail}", "error")
                else:
                    written = [ln.strip() for ln in result.stdout.splitlines() if ln.strip()]
                    if not written or not Path(written[-1]).is_file():
                        self.show_message("Applying the model wrote no segmentation.", "error")
                    else:
                        self.predictionReady.emit(written[-1], name)
                        self.show_message(f"Segmented {name} with the model of {job.name}.", "ok")
            finally:
                shutil.rmtree(work, ignore_errors=True)
                self._update_buttons()

        self.log(" ".join(proc_lib.aeseg_command(self.python, *args)))
        self.run_async(args, done, "predict", json_output=False)
        self.show_message(f"Segmenting {name} with the model of {job.name} in the background…", "info")
        self._update_buttons()
        return True

    # ------------------------------------------------------------------ buttons

    def _update_buttons(self) -> None:
        ui = self.ui
        running = self.job_running()
        live = self._watching_live()
        ui.startButton.setEnabled(not running and bool(self.selected_method()) and
                                  (self.form is None or self.form.is_valid()))
        ui.cancelButton.setEnabled(running or live)
        ui.resumeButton.setEnabled(self.can_resume())
        has_queue = self.queue is not None and len(self.queue) > 0
        ui.nextFlaggedButton.setEnabled(has_queue and self.queue.counts()["flagged"] > 0)
        ui.acceptButton.setEnabled(self.current_case is not None)
        ui.editButton.setEnabled(self.current_case is not None)
        ui.mapComboBox.setEnabled(self.current_case is not None and int(q.qget(ui.mapComboBox, "count")) > 1)
        ui.retrainButton.setEnabled(self.job_dir is not None and bool(self.job) and not running)
        ui.reportButton.setEnabled(self.report_path() is not None)
        ui.exportButton.setEnabled(not any(n == "export" for _, _, n in self._commands))
        ui.applyModelButton.setEnabled(self.model_dir() is not None
                                       and not any(n == "predict" for _, _, n in self._commands))
        ui.resetConfigButton.setEnabled(self.form is not None)
        own_epochs = self._form_has("epochs")
        ui.epochsLabel.setVisible(not own_epochs)
        ui.epochsSpinBox.setVisible(not own_epochs)
        ui.methodFormGroupBox.setVisible(self.form is not None)

    # ------------------------------------------------------------------ teardown

    def shutdown(self, cancel_running: bool = True) -> None:
        """Stop polling; ask a running job to stop after its step (it saves and can be resumed)."""
        self.timer.stop()
        if cancel_running and self.job_running() and self.job_dir is not None:
            proc_lib.write_cancel_file(self.job_dir)
        for p, _, _ in self._commands:
            p.kill()
            p.cleanup_logs()
        self._commands.clear()

    def save_screenshot(self, path: str | os.PathLike) -> None:
        """Render the panel to a PNG (works offscreen)."""
        self.root.grab().save(str(path))


def _no_volume(folder: Path) -> tuple[str, str]:
    raise ValueError("no volume to segment outside Slicer")


def _unique_sibling(job_dir: Path, tag: str) -> Path:
    base = re.sub(rf"-{tag}-\d+$", "", job_dir.name)
    n = 1
    while True:
        cand = job_dir.parent / f"{base}-{tag}-{n}"
        if not cand.exists():
            return cand
        n += 1


__all__ = ["Panel", "UI_FILE", "format_duration"]
