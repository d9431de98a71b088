"""A method's parameter form, generated from the config schema ``aeseg methods --json`` prints.

Each method lists its config dataclass fields as ``{"name", "type", "default", "help",
"choices", "min", "max"}`` with type ``int``, ``float``, ``bool``, ``str`` or ``choice``.
Nothing here knows any method: a new method's fields appear as soon as the core lists them.

The checking (:func:`coerce`) and the ``--set key=value`` arguments (:func:`set_args`) are
plain Python; :class:`MethodForm` is the Qt widget built on them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from aeseg.io.values import number  # stdlib only: no core requirement needed

TYPES = ("int", "float", "bool", "str", "choice")
INT32 = 2**31 - 1


class FieldError(ValueError):
    """One field's value is invalid; the message says why."""


class FormError(ValueError):
    """Some fields are invalid; ``errors`` maps field name → message."""

    def __init__(self, errors: Mapping[str, str]) -> None:
        self.errors = dict(errors)
        super().__init__("; ".join(f"{k}: {v}" for k, v in self.errors.items()))


@dataclass(frozen=True)
class FieldSpec:
    name: str
    type: str = "str"
    default: Any = None
    help: str = ""
    choices: tuple = ()
    min: float | None = None
    max: float | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FieldSpec":
        t = str(d.get("type", "str")).lower()
        if t not in TYPES:
            t = "str"  # an unknown type is edited as text and passed through as written
        choices = tuple(d.get("choices") or ())
        if t != "choice" and choices:
            t = "choice"
        return cls(str(d["name"]), t, d.get("default"), str(d.get("help") or ""), choices,
                   number(d.get("min")), number(d.get("max")))

    @property
    def label(self) -> str:
        text = self.name.replace("_", " ").strip()
        return text[:1].upper() + text[1:]

    @property
    def optional(self) -> bool:
        """A field whose default is None may be left empty."""
        return self.default is None and self.type in ("int", "float", "str")


def parse_schema(schema: Iterable[Mapping[str, Any]]) -> list[FieldSpec]:
    return [FieldSpec.from_dict(d) for d in schema or ()]


def _fmt_bound(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def coerce(spec: FieldSpec, raw: Any) -> Any:
    """``raw`` (typed or text) as the field's type; FieldError if it is not valid or out of range."""
    if isinstance(raw, str):
        raw_s = raw.strip()
        if raw_s == "" and spec.type != "str":
            if spec.optional:
                return None
            raise FieldError("a value is required")
    if raw is None:
        if spec.optional:
            return None
        raise FieldError("a value is required")
    t = spec.type
    if t == "bool":
        if isinstance(raw, bool):
            return raw
        s = str(raw).strip().lower()
        if s in ("true", "1", "yes", "on"):
            return True
        if s in ("false", "0", "no", "off"):
            return False
        raise FieldError(f"{raw!r} is not true or false")
    if t == "choice":
        for c in spec.choices:
            if raw == c or str(raw).strip() == str(c):
                return c
        raise FieldError(f"{raw!r} is not one of {', '.join(map(str, spec.choices))}")
    if t == "int":
        if isinstance(raw, bool):
            raise FieldError("expected a whole number")
        if isinstance(raw, int):
            v = raw
        elif isinstance(raw, float):
            if not raw.is_integer():
                raise FieldError(f"{raw!r} is not a whole number")
            v = int(raw)
        else:
            try:
                v = int(str(raw).strip())
            except ValueError:
                raise FieldError(f"{raw!r} is not a whole number") from None
        _check_range(spec, v)
        return v
    if t == "float":
        if isinstance(raw, bool):
            raise FieldError("expected a number")
        try:
            v = float(raw.strip() if isinstance(raw, str) else raw)
        except (TypeError, ValueError):
            raise FieldError(f"{raw!r} is not a number") from None
        if not math.isfinite(v):
            raise FieldError("must be a finite number")
        _check_range(spec, v)
        return v
    return str(raw)


def _check_range(spec: FieldSpec, v: float) -> None:
    if spec.min is not None and v < spec.min:
        raise FieldError(f"{v} is below the minimum {_fmt_bound(spec.min)}")
    if spec.max is not None and v > spec.max:
        raise FieldError(f"{v} is above the maximum {_fmt_bound(spec.max)}")


def format_value(spec: FieldSpec, value: Any) -> str:
    """A value as ``--set`` and the text fields write it: ``true``/``false``, shortest float repr."""
    if value is None:
        return ""
    if spec.type == "bool":
        return "true" if value else "false"
    if spec.type == "float":
        return repr(float(value))
    return str(value)


def validate_values(specs: Sequence[FieldSpec], values: Mapping[str, Any]) -> dict[str, Any]:
    """Coerce every known field of ``values``; FormError listing all invalid ones."""
    out, errors = {}, {}
    by_name = {s.name: s for s in specs}
    for name, raw in values.items():
        spec = by_name.get(name)
        if spec is None:
            continue
        try:
            out[name] = coerce(spec, raw)
        except FieldError as e:
            errors[name] = str(e)
    if errors:
        raise FormError(errors)
    return out


def set_args(specs: Sequence[FieldSpec], values: Mapping[str, Any], only_changed: bool = True) -> list[str]:
    """``["--set", "epochs=5", ...]`` for the fields in ``values`` (only those differing from defaults)."""
    typed = validate_values(specs, values)
    args: list[str] = []
    for spec in specs:
        if spec.name not in typed:
            continue
        v = typed[spec.name]
        if only_changed and _same(spec, v, spec.default):
            continue
        if v is None:
            continue  # cannot express "unset" with --set: the default applies
        args += ["--set", f"{spec.name}={format_value(spec, v)}"]
    return args


def _same(spec: FieldSpec, a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    try:
        return coerce(spec, a) == coerce(spec, b)
    except FieldError:
        return False


# ---------------------------------------------------------------------------- the Qt form


class MethodForm:
    """A QWidget with one row per config field, typed getters and ``--set`` arguments.

    int → QSpinBox (range from min/max), float → QLineEdit checked on every edit (so
    ``1e-4`` stays readable), bool → QCheckBox, choice → QComboBox, str → QLineEdit.
    Invalid entries are listed in red under the form; :meth:`values` raises FormError.
    """

    def __init__(self, schema: Iterable[Mapping[str, Any]], parent: Any = None) -> None:
        from . import qt_shim as q

        self._q = q
        q.guard_none_refcount()
        self.specs = parse_schema(schema)
        self.widget = q.QWidget(parent)
        self.widget.setObjectName("methodForm")
        self.layout = q.QFormLayout(self.widget)
        self.layout.setContentsMargins(0, 0, 0, 0)
        self.editors: dict[str, Any] = {}
        self.changed = q.PySignal()  # emitted with no arguments when any value changes
        for spec in self.specs:
            editor = self._make_editor(spec)
            editor.setObjectName(f"config_{spec.name}")
            tip = spec.help
            if spec.min is not None or spec.max is not None:
                lo = _fmt_bound(spec.min) if spec.min is not None else "−∞"
                hi = _fmt_bound(spec.max) if spec.max is not None else "∞"
                tip = (tip + "\n" if tip else "") + f"Range: {lo} … {hi}"
            tip = (tip + "\n" if tip else "") + f"Default: {format_value(spec, spec.default) or '(none)'}"
            editor.setToolTip(tip)
            label = q.QLabel(spec.label + ":")
            label.setToolTip(tip)
            self.layout.addRow(label, editor)
            self.editors[spec.name] = editor
        self.error_label = q.QLabel("")
        self.error_label.setObjectName("methodFormErrors")
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet("color: #c0392b;")
        self.error_label.setVisible(False)
        self.layout.addRow(self.error_label)
        self.reset()

    def _make_editor(self, spec: FieldSpec) -> Any:
        q = self._q
        if spec.type == "bool":
            w = q.QCheckBox()
            w.toggled.connect(self._on_changed)
        elif spec.type == "choice":
            w = q.QComboBox()
            for c in spec.choices:
                w.addItem(str(c))
            w.currentIndexChanged.connect(self._on_changed)
        elif spec.type == "int" and not spec.optional and _fits_int32(spec):
            w = q.QSpinBox()
            w.setRange(int(spec.min) if spec.min is not None else -INT32, int(spec.max) if spec.max is not None else INT32)
            w.valueChanged.connect(self._on_changed)
        else:
            w = q.QLineEdit()
            if spec.optional:
                w.setPlaceholderText("(default: none)")
            w.textChanged.connect(self._on_changed)
        return w

    # -- reading and writing

    def raw_value(self, name: str) -> Any:
        q, w = self._q, self.editors[name]
        spec = self._spec(name)
        if isinstance(w, q.QCheckBox):
            return bool(q.qget(w, "checked"))
        if isinstance(w, q.QComboBox):
            i = int(q.qget(w, "currentIndex"))
            return spec.choices[i] if 0 <= i < len(spec.choices) else None
        if isinstance(w, q.QSpinBox):
            return int(q.qget(w, "value"))
        return str(q.qget(w, "text"))

    def _write(self, spec: FieldSpec, value: Any) -> None:
        q, w = self._q, self.editors[spec.name]
        if isinstance(w, q.QCheckBox):
            w.setChecked(bool(value))
        elif isinstance(w, q.QComboBox):
            idx = next((i for i, c in enumerate(spec.choices) if c == value), 0)
            w.setCurrentIndex(idx)
        elif isinstance(w, q.QSpinBox):
            w.setValue(int(value))
        else:
            w.setText(format_value(spec, value))

    def _spec(self, name: str) -> FieldSpec:
        for s in self.specs:
            if s.name == name:
                return s
        raise KeyError(name)

    def errors(self) -> dict[str, str]:
        errors = {}
        for spec in self.specs:
            try:
                coerce(spec, self.raw_value(spec.name))
            except FieldError as e:
                errors[spec.name] = str(e)
        return errors

    def is_valid(self) -> bool:
        return not self.errors()

    def values(self) -> dict[str, Any]:
        """Every field, typed (int, float, bool, str, a choice); FormError if any is invalid."""
        return validate_values(self.specs, {s.name: self.raw_value(s.name) for s in self.specs})

    def changed_values(self) -> dict[str, Any]:
        return {k: v for k, v in self.values().items() if not _same(self._spec(k), v, self._spec(k).default)}

    def set_values(self, values: Mapping[str, Any]) -> list[str]:
        """Fill fields from ``values`` (e.g. a job's config); returns the keys that are not fields.

        All values are checked first: an invalid or out-of-range one raises FormError and
        nothing is changed.
        """
        typed = validate_values(self.specs, values)
        for spec in self.specs:
            if spec.name in typed and typed[spec.name] is not None:
                self._write(spec, typed[spec.name])
            elif spec.name in typed:
                self._write(spec, "")
        self._show_errors()
        return [k for k in values if k not in typed]

    def reset(self) -> None:
        """Every field back to its default."""
        for spec in self.specs:
            d = spec.default
            if d is None:
                if spec.type == "bool":
                    d = False
                elif spec.type == "choice":
                    d = spec.choices[0] if spec.choices else ""
                elif spec.type == "int" and not spec.optional and _fits_int32(spec):
                    d = int(spec.min) if spec.min is not None else 0
                else:
                    d = ""
            self._write(spec, d)
        self._show_errors()

    def set_args(self, only_changed: bool = True) -> list[str]:
        return set_args(self.specs, {s.name: self.raw_value(s.name) for s in self.specs}, only_changed)

    # -- feedback

    def _on_changed(self, *args: Any) -> None:
        self._show_errors()
        self.changed.emit()

    def _show_errors(self) -> None:
        errors = self.errors()
        for spec in self.specs:
            w = self.editors[spec.name]
            if isinstance(w, self._q.QLineEdit):
                w.setStyleSheet("border: 1px solid #c0392b;" if spec.name in errors else "")
        if errors:
            self.error_label.setText("<br>".join(f"<b>{self._spec(k).label}</b>: {v}" for k, v in errors.items()))
        self.error_label.setVisible(bool(errors))


def _fits_int32(spec: FieldSpec) -> bool:
    lo = spec.min if spec.min is not None else -INT32
    hi = spec.max if spec.max is not None else INT32
    return -INT32 <= lo and hi <= INT32
