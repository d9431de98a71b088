"""Method parameter forms generated from the ``aeseg methods --json`` config schema."""

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "AnnotationEfficientSeg"))

from AnnotationEfficientSegLib.forms import (  # noqa: E402
    FieldError, FieldSpec, FormError, coerce, parse_schema, set_args,
)

SCHEMA = [
    {"name": "epochs", "type": "int", "default": 100, "help": "Training epochs", "min": 1, "max": 10000},
    {"name": "lr", "type": "float", "default": 0.001, "help": "Learning rate", "min": 0.0, "max": 1.0},
    {"name": "amp", "type": "bool", "default": False, "help": "Mixed precision"},
    {"name": "loss", "type": "choice", "default": "dice_ce", "choices": ["dice", "dice_ce", "ce"], "help": "Loss"},
    {"name": "tag", "type": "str", "default": "run", "help": "Free text"},
    {"name": "max_cases", "type": "int", "default": None, "help": "Optional limit", "min": 1, "max": None},
    {"name": "future_thing", "type": "tensor", "default": "abc", "help": "unknown type"},
]


def test_schema_parsing_and_coercion():
    specs = {s.name: s for s in parse_schema(SCHEMA)}
    assert specs["future_thing"].type == "str"  # unknown types are edited as text
    assert specs["max_cases"].optional and not specs["epochs"].optional
    assert specs["lr"].label == "Lr" and FieldSpec("batch_size").label == "Batch size"
    assert coerce(specs["epochs"], "12") == 12 and coerce(specs["epochs"], 12.0) == 12
    assert coerce(specs["lr"], "1e-4") == pytest.approx(1e-4) and isinstance(coerce(specs["lr"], 1), float)
    assert coerce(specs["amp"], "true") is True and coerce(specs["amp"], "0") is False
    assert coerce(specs["loss"], "ce") == "ce"
    assert coerce(specs["max_cases"], "") is None
    for spec, bad, msg in [
        ("epochs", 0, "below the minimum 1"),
        ("epochs", 10001, "above the maximum 10000"),
        ("epochs", "2.5", "whole number"),
        ("epochs", True, "whole number"),
        ("epochs", "", "required"),
        ("lr", "fast", "not a number"),
        ("lr", "inf", "finite"),
        ("lr", 1.5, "above the maximum 1"),
        ("amp", "maybe", "true or false"),
        ("loss", "focal", "not one of"),
        ("max_cases", 0, "below the minimum"),
    ]:
        with pytest.raises(FieldError, match=msg):
            coerce(specs[spec], bad)


def test_set_args_lists_changed_values_typed():
    specs = parse_schema(SCHEMA)
    assert set_args(specs, {"epochs": 100, "lr": "0.001", "amp": False}) == []
    args = set_args(specs, {"epochs": "5", "lr": "1e-4", "amp": True, "loss": "ce", "max_cases": "", "other": 1})
    assert args == ["--set", "epochs=5", "--set", "lr=0.0001", "--set", "amp=true", "--set", "loss=ce"]
    assert set_args(specs, {"epochs": 100}, only_changed=False) == ["--set", "epochs=100"]
    with pytest.raises(FormError) as e:
        set_args(specs, {"epochs": -1, "lr": "x"})
    assert set(e.value.errors) == {"epochs", "lr"}


@pytest.fixture
def qapp():
    pytest.importorskip("PySide6")
    from AnnotationEfficientSegLib import qt_shim

    return qt_shim.ensure_app()


def test_qt_form_widgets_typed_values_and_rejections(qapp):
    from PySide6 import QtWidgets

    from AnnotationEfficientSegLib.forms import MethodForm

    form = MethodForm(SCHEMA)
    ed = form.editors
    assert isinstance(ed["epochs"], QtWidgets.QSpinBox) and (ed["epochs"].minimum(), ed["epochs"].maximum()) == (1, 10000)
    assert isinstance(ed["lr"], QtWidgets.QLineEdit) and ed["lr"].text() == "0.001"
    assert isinstance(ed["amp"], QtWidgets.QCheckBox) and isinstance(ed["loss"], QtWidgets.QComboBox)
    assert isinstance(ed["max_cases"], QtWidgets.QLineEdit)  # optional int: may stay empty
    assert ed["loss"].currentText() == "dice_ce" and "Training epochs" in ed["epochs"].toolTip()
    assert "1 … 10000" in ed["epochs"].toolTip()
    assert form.widget.findChild(QtWidgets.QSpinBox, "config_epochs") is ed["epochs"]
    v = form.values()
    assert v == {"epochs": 100, "lr": 0.001, "amp": False, "loss": "dice_ce", "tag": "run", "max_cases": None,
                 "future_thing": "abc"}
    assert type(v["epochs"]) is int and type(v["lr"]) is float and type(v["amp"]) is bool
    assert form.set_args() == []

    changes = []
    form.changed.connect(lambda: changes.append(1))
    ed["epochs"].setValue(5)
    ed["lr"].setText("3e-4")
    ed["amp"].setChecked(True)
    ed["loss"].setCurrentIndex(2)
    ed["max_cases"].setText("20")
    assert len(changes) >= 5
    assert form.changed_values() == {"epochs": 5, "lr": 0.0003, "amp": True, "loss": "ce", "max_cases": 20}
    assert form.set_args() == ["--set", "epochs=5", "--set", "lr=0.0003", "--set", "amp=true",
                               "--set", "loss=ce", "--set", "max_cases=20"]

    ed["lr"].setText("-1")  # typed out of range: the form says so and refuses to give values
    assert form.errors() == {"lr": "-1.0 is below the minimum 0"}
    assert not form.is_valid() and form.error_label.isVisibleTo(form.widget)
    with pytest.raises(FormError):
        form.values()
    ed["lr"].setText("0.01")
    assert form.is_valid() and not form.error_label.isVisibleTo(form.widget)

    # restoring values (e.g. a job's config) checks them all first and ignores unknown keys
    assert form.set_values({"epochs": 7, "lr": 0.5, "not_a_field": 1}) == ["not_a_field"]
    assert form.values()["epochs"] == 7 and ed["lr"].text() == "0.5"
    with pytest.raises(FormError):
        form.set_values({"epochs": 99999, "lr": 0.2})
    assert form.values()["epochs"] == 7 and form.values()["lr"] == 0.5  # unchanged
    form.reset()
    assert form.set_args() == []


def test_qt_form_for_empty_schema(qapp):
    from AnnotationEfficientSegLib.forms import MethodForm

    form = MethodForm([])
    assert form.values() == {} and form.set_args() == [] and form.is_valid()
