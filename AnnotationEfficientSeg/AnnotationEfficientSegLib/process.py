"""Launching ``aeseg`` in the background: argument lists, a process in its own group, cancel.

Every command is an argument list (never a shell string). A run's stdout and stderr go to
files, not pipes, so a chatty process can never block on a full pipe while the GUI polls
it with a timer; :meth:`ManagedProcess.poll` never waits.

Cancel is graceful first: an empty ``JOB/cancel`` file asks the run to finish its step,
save, write a ``cancelled`` event and exit. If it is still running after ``grace_s`` it
gets SIGTERM, and after ``term_s`` more the whole process tree is killed (its process
group on POSIX, ``taskkill /T /F`` on Windows), data-loader workers included.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

CANCEL_FILE = "cancel"

# The core's requirements: aeseg/requirements.txt, the list pyproject.toml reads too.
REQUIREMENTS_FILE = Path(__file__).resolve().parents[1] / "aeseg" / "requirements.txt"
# Modules whose import name differs from their pip project name.
_IMPORT_NAMES = {"pynrrd": "nrrd"}
# Not installed by the module: torch comes through the PyTorch extension (PyTorchUtils),
# SimpleITK and numpy ship with Slicer and must not be replaced.
_FROM_SLICER = {"torch", "SimpleITK", "numpy"}


def read_requirements(path: Path = REQUIREMENTS_FILE) -> dict[str, str]:
    """``{pip project name: requirement}`` of the core, from ``aeseg/requirements.txt``."""
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name = re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0]
            out[name] = line
    return out


_ALL = read_requirements()
# Python modules the module installs, mapped to the pip requirement that provides them.
CORE_REQUIREMENTS: dict[str, str] = {_IMPORT_NAMES.get(n, n): r for n, r in _ALL.items() if n not in _FROM_SLICER}
TORCH_REQUIREMENT = _ALL["torch"][len("torch"):]


def missing_modules(names: Iterable[str]) -> list[str]:
    """The module names in ``names`` that cannot be imported here (checked without importing them)."""
    missing = []
    for name in names:
        try:
            if importlib.util.find_spec(name) is None:
                missing.append(name)
        except (ImportError, ValueError):
            missing.append(name)
    return missing


def missing_requirements() -> list[str]:
    """pip requirements of the core that are not installed (torch excluded: see PyTorchUtils)."""
    return [CORE_REQUIREMENTS[m] for m in missing_modules(CORE_REQUIREMENTS)]


# ---------------------------------------------------------------------------- commands


def aeseg_command(python: str, *args: str) -> list[str]:
    """``[python, "-m", "aeseg", *args]``."""
    return [str(python), "-m", "aeseg", *[str(a) for a in args]]


def validate_args(cohort: str | os.PathLike) -> list[str]:
    return ["validate", str(cohort), "--json"]


def methods_args() -> list[str]:
    return ["methods", "--json"]


def devices_args() -> list[str]:
    return ["devices", "--json"]


def train_args(
    cohort: str | os.PathLike,
    method: str,
    out: str | os.PathLike,
    *,
    config_file: str | os.PathLike | None = None,
    set_args: Sequence[str] = (),
    device: str | None = None,
    seed: int | None = None,
) -> list[str]:
    """``train COHORT --method M --out JOB [--config F] [--set k=v ...] [--device D] [--seed N]``.

    ``set_args`` is the flat list :func:`forms.set_args` returns (``["--set", "k=v", ...]``).
    """
    args = ["train", str(cohort), "--method", method, "--out", str(out)]
    if config_file:
        args += ["--config", str(config_file)]
    args += [str(a) for a in set_args]
    if device:
        args += ["--device", device]
    if seed is not None:
        args += ["--seed", str(int(seed))]
    return args


def resume_args(job_dir: str | os.PathLike) -> list[str]:
    return ["train", "--resume", str(job_dir)]


def predict_args(model: str | os.PathLike, images: Sequence[str | os.PathLike], out: str | os.PathLike,
                 *, device: str | None = None, fmt: str = "seg.nrrd") -> list[str]:
    """``predict --model JOB IMAGE... --out DIR --format F [--device D]``; the command prints
    each written file on its own line."""
    if not images:
        raise ValueError("give at least one image to predict")
    args = ["predict", "--model", str(model), *[str(i) for i in images], "--out", str(out), "--format", fmt]
    if device:
        args += ["--device", device]
    return args


EXPORT_FORMATS = ("nifti", "seg.nrrd", "nnunet")
EXPORT_LABELS = ("refined", "pseudo_labels", "corrections")


def export_args(
    source: str | os.PathLike,
    out: str | os.PathLike,
    fmt: str,
    *,
    cases: Sequence[str] | None = None,
    labels: str | None = None,
) -> list[str]:
    """``export SOURCE --out DIR --format F [--cases a,b] [--labels L]``."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"export format must be one of {', '.join(EXPORT_FORMATS)}, not {fmt!r}")
    if labels is not None and labels not in EXPORT_LABELS:
        raise ValueError(f"labels must be one of {', '.join(EXPORT_LABELS)}, not {labels!r}")
    args = ["export", str(source), "--out", str(out), "--format", fmt]
    if cases:
        bad = [c for c in cases if "," in c]
        if bad:
            raise ValueError(f"case names cannot contain ',': {bad}")
        args += ["--cases", ",".join(cases)]
    if labels:
        args += ["--labels", labels]
    return args


def child_env(python_path: Sequence[str | os.PathLike] = (), base: dict | None = None) -> dict[str, str]:
    """Environment for a child Python: ``python_path`` prepended to PYTHONPATH, unbuffered output."""
    env = dict(os.environ if base is None else base)
    parts = [str(p) for p in python_path]
    if env.get("PYTHONPATH"):
        parts.append(env["PYTHONPATH"])
    if parts:
        env["PYTHONPATH"] = os.pathsep.join(parts)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("PYTHONIOENCODING", "utf-8")
    return env


# ---------------------------------------------------------------------------- processes


def _popen_kwargs() -> dict:
    """Start the child in its own process group (POSIX: new session) so the tree can be killed."""
    if os.name == "nt":
        flags = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        return {"creationflags": flags}
    return {"start_new_session": True}


def kill_tree(pid: int, pgid: int | None = None) -> None:
    """Kill a process and all its descendants, now (SIGKILL to its group; taskkill /T /F on Windows)."""
    if os.name == "nt":
        subprocess.run(["taskkill", "/T", "/F", "/PID", str(pid)], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)
        return
    try:
        os.killpg(pgid if pgid is not None else pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass
class ProcessResult:
    returncode: int
    stdout: str
    stderr: str


class ManagedProcess:
    """A background process with output in files, non-blocking :meth:`poll` and staged cancel.

    ``job_dir`` (optional) is where the cancel file goes. Call :meth:`poll` from a timer;
    it drives the cancel stages and returns the exit code once the process has ended.
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        cwd: str | os.PathLike | None = None,
        env: dict[str, str] | None = None,
        job_dir: str | os.PathLike | None = None,
        log_dir: str | os.PathLike | None = None,
        name: str = "aeseg",
    ) -> None:
        self.command = [str(c) for c in command]
        self.cwd = str(cwd) if cwd else None
        self.env = env
        self.job_dir = Path(job_dir) if job_dir else None
        self.name = name
        self._log_dir = Path(log_dir) if log_dir else None
        self._own_log_dir: Path | None = None  # a temporary folder made by start(), removed with the logs
        self._proc: subprocess.Popen | None = None
        self._pgid: int | None = None
        self._stdout_path: Path | None = None
        self._stderr_path: Path | None = None
        self._files: list = []
        self._cancel_started: float | None = None
        self._term_sent: float | None = None
        self._killed = False
        self.grace_s = 60.0
        self.term_s = 10.0
        self.returncode: int | None = None

    # -- lifecycle

    def start(self) -> "ManagedProcess":
        if self._proc is not None:
            raise RuntimeError("process already started")
        if self._log_dir is None:
            self._own_log_dir = log_dir = Path(tempfile.mkdtemp(prefix="aeseg-proc-"))
        else:
            log_dir = self._log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self._stdout_path = log_dir / f"{self.name}-{stamp}-{os.getpid()}-{id(self)}.stdout.txt"
        self._stderr_path = log_dir / f"{self.name}-{stamp}-{os.getpid()}-{id(self)}.stderr.txt"
        out = open(self._stdout_path, "wb")
        err = open(self._stderr_path, "wb")
        self._files = [out, err]
        try:
            self._proc = subprocess.Popen(self.command, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
                                          stdout=out, stderr=err, **_popen_kwargs())
        except Exception:
            self._close_files()
            raise
        if os.name != "nt":
            try:
                self._pgid = os.getpgid(self._proc.pid)
            except ProcessLookupError:
                self._pgid = self._proc.pid
        return self

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self.poll() is None

    @property
    def cancelling(self) -> bool:
        return self._cancel_started is not None and self.returncode is None

    def poll(self) -> int | None:
        """Exit code if the process has ended (its remaining group is then killed), else None. Never blocks."""
        if self._proc is None:
            return None
        if self.returncode is not None:
            return self.returncode
        code = self._proc.poll()
        if code is None:
            self._advance_cancel()
            code = self._proc.poll()
        if code is not None:
            self.returncode = code
            self._close_files()
            # Leftover children (data-loader workers, a grandchild) must not outlive the run.
            self._kill_group()
        return self.returncode

    def wait(self, timeout: float | None = None, interval: float = 0.05) -> int | None:
        """Poll until the process ends or ``timeout`` passes (for scripts and tests, not the GUI)."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            code = self.poll()
            if code is not None:
                return code
            if end is not None and time.monotonic() >= end:
                return None
            time.sleep(interval)

    # -- cancel

    def request_cancel(self, grace_s: float | None = None, term_s: float | None = None) -> None:
        """Begin a graceful cancel: the cancel file now, SIGTERM after ``grace_s``, tree kill ``term_s`` later."""
        if grace_s is not None:
            self.grace_s = grace_s
        if term_s is not None:
            self.term_s = term_s
        if self._cancel_started is None:
            self._cancel_started = time.monotonic()
            if self.job_dir is not None:
                write_cancel_file(self.job_dir)
            elif self.grace_s > 0:
                self.grace_s = 0.0  # nothing can hear a cancel file: go straight to SIGTERM
        self.poll()

    def kill(self) -> None:
        """Kill the whole process tree immediately."""
        if self._proc is None:
            return
        self._killed = True
        if os.name == "nt":
            kill_tree(self._proc.pid)
        else:
            self._kill_group()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.poll()

    def _advance_cancel(self) -> None:
        if self._cancel_started is None or self._proc is None:
            return
        now = time.monotonic()
        if self._term_sent is None and now - self._cancel_started >= self.grace_s:
            self._term_sent = now
            self._terminate()
        elif self._term_sent is not None and not self._killed and now - self._term_sent >= self.term_s:
            self._killed = True
            if os.name == "nt":
                kill_tree(self._proc.pid)
            else:
                self._kill_group()

    def _terminate(self) -> None:
        assert self._proc is not None
        if os.name == "nt":
            try:
                self._proc.send_signal(signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined]
            except (OSError, ValueError):
                self._proc.terminate()
            return
        try:
            os.killpg(self._pgid if self._pgid is not None else self._proc.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass

    def _kill_group(self) -> None:
        if self._proc is None:
            return
        if os.name == "nt":
            kill_tree(self._proc.pid)
        else:
            kill_tree(self._proc.pid, self._pgid)

    # -- output

    def _close_files(self) -> None:
        for f in self._files:
            try:
                f.close()
            except OSError:
                pass
        self._files = []

    def stdout_text(self) -> str:
        return _read_text(self._stdout_path)

    def stderr_text(self) -> str:
        return _read_text(self._stderr_path)

    def stderr_tail(self, lines: int = 20) -> str:
        return "\n".join(self.stderr_text().splitlines()[-lines:])

    def result(self) -> ProcessResult | None:
        if self.poll() is None:
            return None
        return ProcessResult(int(self.returncode), self.stdout_text(), self.stderr_text())

    def cleanup_logs(self) -> None:
        """Remove the stdout/stderr files (for short commands whose output has been read),
        and the temporary folder that held them when :meth:`start` made one."""
        self._close_files()
        for p in (self._stdout_path, self._stderr_path):
            if p is not None:
                try:
                    p.unlink()
                except OSError:
                    pass
        if self._own_log_dir is not None:
            try:
                self._own_log_dir.rmdir()  # only when empty: nothing but our two files lived there
            except OSError:
                pass


def _read_text(path: Path | None) -> str:
    if path is None or not path.exists():
        return ""
    return path.read_bytes().decode("utf-8", errors="replace")


def write_cancel_file(job_dir: str | os.PathLike) -> Path:
    """Create the empty ``JOB/cancel`` file that asks a run to stop after its current step."""
    path = Path(job_dir) / CANCEL_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return path


def clear_cancel_file(job_dir: str | os.PathLike) -> bool:
    """Remove a leftover ``JOB/cancel`` (before resuming); True if there was one."""
    path = Path(job_dir) / CANCEL_FILE
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False


class CommandError(RuntimeError):
    """An ``aeseg`` command failed or printed no JSON; the message carries its stderr."""


def parse_json_output(result: ProcessResult, ok_codes: Iterable[int] = (0,)) -> object:
    """The JSON a ``--json`` command printed; CommandError when it printed none or failed."""
    text = result.stdout.strip()
    data = None
    if text:
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            # tolerate log lines before the JSON: take the last line that parses
            for line in reversed(text.splitlines()):
                try:
                    data = json.loads(line)
                    break
                except json.JSONDecodeError:
                    continue
    if data is None or result.returncode not in tuple(ok_codes):
        tail = "\n".join(result.stderr.strip().splitlines()[-15:])
        raise CommandError(f"command failed (exit {result.returncode})" + (f":\n{tail}" if tail else ""))
    return data


def run_json(command: Sequence[str], *, env: dict | None = None, timeout: float = 120.0,
             ok_codes: Iterable[int] = (0,)) -> object:
    """Run a short ``--json`` command to completion and return its JSON (blocking: scripts and tests)."""
    proc = ManagedProcess(command, env=env, name="aeseg-json").start()
    try:
        if proc.wait(timeout=timeout) is None:
            proc.kill()
            raise CommandError(f"command timed out after {timeout:.0f} s: {' '.join(command[:4])}")
        return parse_json_output(proc.result(), ok_codes)  # type: ignore[arg-type]
    finally:
        proc.cleanup_logs()


def default_python(in_slicer: bool = False) -> str:
    """The Python to run ``-m aeseg`` with: ``PythonSlicer`` inside Slicer, else this interpreter."""
    if in_slicer:
        import shutil

        found = shutil.which("PythonSlicer")
        if found:
            return found
    return sys.executable
