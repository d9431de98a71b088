"""``aeseg validate``: every kind of bad input gives its message (file + fix), a non-zero
exit, and writes nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import snapshot, write_img

from aeseg.cli import main
from aeseg.cohort.validation import validate_cohort


def _good(root, cid="c1", shape=(3, 8, 8), spacing=(1, 1, 2)):
    img = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    lab = np.zeros(shape, np.uint8)
    lab[:, 2:5, 2:5] = 1
    write_img(root / "images" / f"{cid}.nii.gz", img, spacing)
    write_img(root / "labels" / f"{cid}.nii.gz", lab, spacing)


def _run(root, capsys, *extra):
    before = snapshot(root)
    code = main(["validate", str(root), *extra])
    out = capsys.readouterr().out
    assert snapshot(root) == before, "validate must not write anything"
    return code, out


def test_clean_cohort_passes(tmp_path, capsys):
    _good(tmp_path)
    code, out = _run(tmp_path, capsys)
    assert code == 0 and "No problems found" in out
    assert "supervised" in out


def _problems(root):
    rep = validate_cohort(root)
    return rep, [(p.file, p.message, p.fix) for p in rep.problems if p.severity == "error"]


BAD = {}


def bad(fn):
    BAD[fn.__name__] = fn
    return fn


@bad
def unreadable(root):
    _good(root)
    (root / "images" / "c2.nii.gz").write_bytes(b"not an image at all")
    return "c2.nii.gz", "unreadable"


@bad
def missing_file(root):
    _good(root)
    (root / "cohort.csv").write_text("case,image,label\nc1,images/c1.nii.gz,labels/c1.nii.gz\nc2,images/gone.nii.gz,\n")
    return "gone.nii.gz", "not found"


@bad
def geometry_mismatch(root):
    _good(root)
    write_img(root / "labels" / "c1.nii.gz", np.ones((3, 8, 8), np.uint8), spacing=(1, 1, 5))
    return "labels/c1.nii.gz", "geometry differs"


@bad
def empty_label(root):
    _good(root)
    write_img(root / "labels" / "c1.nii.gz", np.zeros((3, 8, 8), np.uint8), spacing=(1, 1, 2))
    return "labels/c1.nii.gz", "empty label"


@bad
def nan_voxels(root):
    _good(root)
    a = np.zeros((3, 8, 8), np.float32)
    a[1, 2, 3] = np.nan
    a[2, 2, 3] = np.inf
    write_img(root / "images" / "c5.nrrd", a, (1, 1, 2))  # (ITK's NIfTI reader turns NaN into 0)
    return "images/c5.nrrd", "2 NaN/Inf voxels"


@bad
def four_d(root):
    _good(root)
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 3, 4, 5), np.float32), isVector=False), str(root / "images" / "c4.nii.gz"))
    return "c4.nii.gz", "4D image"


@bad
def duplicate_case(root):
    _good(root)
    (root / "cohort.csv").write_text("case,image,label\nc1,images/c1.nii.gz,labels/c1.nii.gz\nc1,images/c1.nii.gz,\n")
    return "cohort.csv:3", "duplicate case id 'c1'"


@bad
def label_without_image(root):
    _good(root)
    write_img(root / "labels" / "orphan.nii.gz", np.ones((3, 8, 8), np.uint8), (1, 1, 2))
    return "labels/orphan.nii.gz", "label without image"


@bad
def unknown_role(root):
    _good(root)
    (root / "cohort.csv").write_text("case,image,label,label_kind\nc1,images/c1.nii.gz,labels/c1.nii.gz,expert\n")
    return "cohort.csv:2", "unknown label_kind 'expert'"


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_reported_with_file_and_fix(tmp_path, capsys, name):
    file_part, message_part = BAD[name](tmp_path)
    rep, problems = _problems(tmp_path)
    assert not rep.ok
    hits = [p for p in problems if file_part in p[0] and message_part in p[1]]
    assert hits, f"expected a problem on {file_part!r} saying {message_part!r}; got {problems}"
    assert all(p[2] for p in hits), "every problem carries a fix"
    code, out = _run(tmp_path, capsys)
    assert code == 1 and message_part in out
    code, out = _run(tmp_path, capsys, "--json")
    data = json.loads(out)
    assert code == 1 and data["ok"] is False
    assert any(message_part in p["message"] for p in data["problems"])


def test_json_lists_methods_with_reasons(tmp_path, capsys):
    _good(tmp_path)
    (tmp_path / "cohort.csv").write_text("case,image,label,label_kind\nc1,images/c1.nii.gz,labels/c1.nii.gz,noisy\n")
    code, out = _run(tmp_path, capsys, "--json")
    data = json.loads(out)
    by = {m["name"]: m for m in data["methods"]}
    assert code == 0
    assert by["supervised"]["supported"] is False and "labels=all" in by["supervised"]["reason"]
    assert data["summary"]["label_kinds"] == {"clean": 0, "noisy": 1, "none": 0}
    assert data["summary"]["dims"] == "3D"
