"""One import for Qt: PythonQt's ``qt`` inside 3D Slicer, PySide6 outside (tests, offscreen rendering).

Only the names the panel uses are exposed. Two differences between the bindings matter
to code written against this shim:

* **Properties.** PythonQt turns a Qt property into an attribute (``lineEdit.text`` is a
  ``str``; ``lineEdit.text()`` fails), PySide6 keeps the getter method
  (``lineEdit.text()``). Read any getter with :func:`qget` (``qget(lineEdit, "text")``);
  setters (``setText``, ``setValue``...) are methods in both.
* **Signals defined in Python.** PySide6 has ``Signal``/``Slot``; PythonQt cannot declare
  new Qt signals on Python classes. Widgets' own Qt signals (``clicked``, ``timeout``,
  ``currentIndexChanged``...) are connected the same way in both (``.connect(callable)``);
  signals of our own classes use :class:`PySignal`, a plain-Python callback list.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Callable

try:  # 3D Slicer (PythonQt): every Qt class lives in the flat ``qt`` module
    import qt as _qt  # type: ignore[import-not-found]

    BINDING = "PythonQt"
    _ns = _qt

    def Slot(*_args, **_kwargs):  # noqa: N802 - Qt naming
        """PythonQt connects plain callables; ``Slot`` is accepted and ignored."""

        def deco(fn):
            return fn

        return deco

except ImportError:  # outside Slicer
    from PySide6 import QtCore as _QtCore
    from PySide6 import QtGui as _QtGui
    from PySide6 import QtWidgets as _QtWidgets

    BINDING = "PySide6"

    class _Namespace:
        def __getattr__(self, name: str) -> Any:
            for mod in (_QtWidgets, _QtCore, _QtGui):
                if hasattr(mod, name):
                    return getattr(mod, name)
            raise AttributeError(name)

    _ns = _Namespace()
    Slot = _QtCore.Slot

IN_SLICER = BINDING == "PythonQt"

# PySide6 6.12.0 on Python < 3.12 drops one reference to None on every call of a method
# that returns void (setEnabled, setText…); after a few thousand calls Python aborts with
# "none_dealloc". (None is immortal from Python 3.12; PythonQt in Slicer is not affected.)
# When the probe below sees the leak, None's reference count is raised far out of reach.
# The extra references are never given back, so this also holds while Python shuts down.
NONE_LEAK = False
_NONE_RESERVE = 1 << 40


def _probe_none_leak() -> bool:
    if IN_SLICER or sys.version_info >= (3, 12):
        return False
    probe = _ns.QObject()
    before = sys.getrefcount(None)
    for _ in range(64):
        probe.setObjectName("probe")
    return sys.getrefcount(None) < before - 32


def guard_none_refcount() -> None:
    """Keep None's reference count high if this PySide6 leaks it (a no-op otherwise)."""
    if NONE_LEAK and sys.getrefcount(None) < _NONE_RESERVE // 2:
        import ctypes

        ctypes.c_ssize_t.from_address(id(None)).value += _NONE_RESERVE  # ob_refcnt, the first field


NONE_LEAK = _probe_none_leak()
if NONE_LEAK:
    logging.getLogger(__name__).info(
        "this PySide6 leaks references to None (PySide6 6.12 on Python < 3.12): compensating")
guard_none_refcount()

Qt = _ns.Qt
QObject = _ns.QObject
QTimer = _ns.QTimer
QColor = _ns.QColor
QBrush = _ns.QBrush
QFont = _ns.QFont
QApplication = _ns.QApplication
QWidget = _ns.QWidget
QLabel = _ns.QLabel
QLineEdit = _ns.QLineEdit
QSpinBox = _ns.QSpinBox
QDoubleSpinBox = _ns.QDoubleSpinBox
QCheckBox = _ns.QCheckBox
QComboBox = _ns.QComboBox
QPushButton = _ns.QPushButton
QProgressBar = _ns.QProgressBar
QPlainTextEdit = _ns.QPlainTextEdit
QTableWidget = _ns.QTableWidget
QTableWidgetItem = _ns.QTableWidgetItem
QAbstractItemView = _ns.QAbstractItemView
QHeaderView = _ns.QHeaderView
QFormLayout = _ns.QFormLayout
QVBoxLayout = _ns.QVBoxLayout
QHBoxLayout = _ns.QHBoxLayout
QGroupBox = _ns.QGroupBox
QFileDialog = _ns.QFileDialog
QDesktopServices = _ns.QDesktopServices
QUrl = _ns.QUrl

# The flags role of a QStandardItem (what QComboBox items are): setting it to 0 disables an item.
ITEM_FLAGS_ROLE = int(Qt.UserRole) - 1


def qget(obj: Any, name: str) -> Any:
    """Read a Qt property/getter the same way in PythonQt (attribute) and PySide6 (method).

    Properties whose PySide6 getter has another name (``checked`` → ``isChecked``,
    ``active`` → ``isActive``) are read with ``QObject.property``.
    """
    try:
        value = getattr(obj, name)
    except AttributeError:
        return obj.property(name)
    return value() if callable(value) else value


def walk(widget: Any):
    """Yield ``widget`` and all its descendant QObjects (depth first)."""
    yield widget
    for child in widget.children():
        yield from walk(child)


def find_children_by_name(root: Any) -> dict[str, Any]:
    """Map objectName → object for every named descendant of ``root`` (like slicer.util.childWidgetVariables)."""
    found: dict[str, Any] = {}
    for obj in walk(root):
        name = qget(obj, "objectName")
        if name and name not in found:
            found[name] = obj
    return found


def load_ui(path: str) -> Any:
    """Load a Qt Designer ``.ui`` file outside Slicer (inside Slicer use ``slicer.util.loadUI``)."""
    if IN_SLICER:
        import slicer  # type: ignore[import-not-found]

        return slicer.util.loadUI(path)
    from PySide6.QtCore import QFile
    from PySide6.QtUiTools import QUiLoader

    f = QFile(path)
    if not f.open(QFile.ReadOnly):
        raise OSError(f"cannot open {path}")
    try:
        widget = QUiLoader().load(f)
    finally:
        f.close()
    if widget is None:
        raise RuntimeError(f"{path}: not a loadable .ui file")
    return widget


def ensure_app() -> Any:
    """The running QApplication (Slicer's, or a new one for tests and offscreen rendering)."""
    app = QApplication.instance()
    if app is None:
        app = QApplication([])
    return app


class PySignal:
    """A plain-Python signal: ``connect``, ``disconnect``, ``emit``; works in both bindings.

    A slot that raises is logged and does not stop the other slots (as in Qt).
    """

    def __init__(self) -> None:
        self._slots: list[Callable[..., Any]] = []

    def connect(self, slot: Callable[..., Any]) -> None:
        if slot not in self._slots:
            self._slots.append(slot)

    def disconnect(self, slot: Callable[..., Any] | None = None) -> None:
        if slot is None:
            self._slots.clear()
        elif slot in self._slots:
            self._slots.remove(slot)

    def emit(self, *args: Any) -> None:
        for slot in list(self._slots):
            try:
                slot(*args)
            except Exception:  # a broken slot must not break the panel
                logging.exception("AnnotationEfficientSeg: slot %r failed", slot)
