"""The ``aeseg`` command through a subprocess, as the Slicer module and users run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import slicerio

from aeseg.cohort import load_cohort, read_image, read_label

from conftest import aeseg

ROOT = Path(__file__).resolve().parents[1]


def test_predict_writes_original_geometry(cli_job, tiny_cohort, tmp_path):
    co = load_cohort(tiny_cohort)
    imgs = [c.image for c in co.cases if c.split == "test"]
    out = tmp_path / "pred"
    aeseg("predict", "--model", cli_job, *imgs, "--out", out)
    aeseg("predict", "--model", cli_job, imgs[0], "--out", out / "nii", "--format", "nii.gz")
    for p in imgs:
        cid = p.name.split(".")[0]
        seg = slicerio.read_segmentation(str(out / f"{cid}.seg.nrrd"))
        np.testing.assert_allclose(seg["ijkToLPS"], read_image(p).geometry.ijk_to_lps(), atol=1e-4)
    cid = imgs[0].name.split(".")[0]
    a, ga = read_label(out / f"{cid}.seg.nrrd")
    b, gb = read_label(out / "nii" / f"{cid}.nii.gz")
    np.testing.assert_array_equal(a, b)
    assert ga.same_grid(gb)
    # the job's own prediction for the case is the same model's
    c, _ = read_label(cli_job / "pseudo_labels" / f"{cid}.seg.nrrd")
    np.testing.assert_array_equal(a, c)


def test_predict_checks_every_input_before_writing(cli_job, tiny_cohort, tmp_path):
    import shutil

    from aeseg.engine.predict import predict_images
    from aeseg.errors import AesegError

    img = next(c.image for c in load_cohort(tiny_cohort).cases if c.split == "test")
    out = tmp_path / "out"
    twins = [tmp_path / d / img.name for d in ("a", "b")]
    for t in twins:
        t.parent.mkdir()
        shutil.copy(img, t)
    (tmp_path / "notes.txt").write_text("not an image")
    bad = {"file not found": [img, tmp_path / "missing.nrrd"],
           "not an image file": [img, tmp_path / "notes.txt"],
           "would both be written to": twins}
    for message, inputs in bad.items():
        with pytest.raises(AesegError, match=message):
            predict_images(cli_job, inputs, out)
        assert not out.exists(), message
    own = tmp_path / "a" / img.name  # predicting a folder's image into that folder in its own format
    fmt = img.name.split(".", 1)[1]
    with pytest.raises(AesegError, match="would overwrite the input image"):
        predict_images(cli_job, [own], own.parent, fmt=fmt)
    assert sorted(p.name for p in own.parent.iterdir()) == [img.name]
    # an image that exists but cannot be read: the ones before it stay written and are listed
    (tmp_path / "broken.nrrd").write_text("NRRD0004\ntruncated")
    r = aeseg("predict", "--model", cli_job, img, tmp_path / "broken.nrrd", "--out", out, check=False)
    first = out / (img.name.split(".")[0] + ".seg.nrrd")
    assert r.returncode == 2 and "1 of 2 predictions written" in r.stderr, r.stderr
    assert r.stdout.split() == [str(first)] and first.is_file()


def test_a_damaged_model_or_an_image_it_cannot_take_is_one_clear_error_with_nothing_written(cli_job, tiny_cohort, tmp_path):
    import shutil

    from aeseg.engine.predict import predict_images
    from aeseg.errors import AesegError, JobError

    img = next(c.image for c in load_cohort(tiny_cohort).cases if c.split == "test")
    for name, damage, says in (("model.pt", b"not a model", "model.pt: not a model of this supervised job"),
                               ("model.json", b"{\"method\": ", "model.json: unreadable")):
        job = tmp_path / name
        shutil.copytree(cli_job / "model", job / "model")
        (job / "model" / name).write_bytes(damage)
        with pytest.raises(JobError, match=says):
            predict_images(job, [img], tmp_path / "out")
        assert not (tmp_path / "out").exists()
    # a colour image for a model of grey images: found from the header, before anything is written
    import SimpleITK as sitk

    rgb = tmp_path / "rgb.png"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((20, 24, 3), np.uint8), isVector=True), str(rgb))
    with pytest.raises(AesegError, match=r"rgb.png: a colour \(3 channels\) image, but the model was trained on "
                                         r"grey \(1 channel\) images.*nothing was written"):
        predict_images(cli_job, [img, rgb], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # a folder of image files is not a DICOM series
    folder = tmp_path / "pngs"
    folder.mkdir()
    shutil.copy(rgb, folder / "a.png")
    with pytest.raises(AesegError, match="pngs: a folder of image files .*not one DICOM series"):
        predict_images(cli_job, [img, folder], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # weights of another network than model.json describes
    job = tmp_path / "other"
    shutil.copytree(cli_job / "model", job / "model")
    spec = json.loads((job / "model" / "model.json").read_text())
    spec["config"]["method"]["features"] *= 2
    (job / "model" / "model.json").write_text(json.dumps(spec))
    with pytest.raises(JobError, match="weights do not fit the network model.json describes"):
        predict_images(job, [img], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_evaluate_against_truth(cli_job, tiny_cohort, tmp_path):
    co = load_cohort(tiny_cohort)
    pred, ref = tmp_path / "p", tmp_path / "r"
    pred.mkdir()
    ref.mkdir()
    for c in co.cases:
        if c.split == "test":
            (pred / f"{c.case_id}.seg.nrrd").symlink_to(cli_job / "pseudo_labels" / f"{c.case_id}.seg.nrrd")
            (ref / c.truth.name).symlink_to(c.truth)
    r = aeseg("evaluate", pred, ref, "--json", "--csv", tmp_path / "m.csv")
    data = json.loads(r.stdout)
    assert len(data["cases"]) == 2 and {"dice", "hd95", "assd", "ravd"} <= set(data["cases"][0])
    assert 0.0 <= data["summary"]["dice"]["mean"] <= 1.0
    assert (tmp_path / "m.csv").read_text().startswith("case,")
    # the same prediction against itself is perfect
    r = aeseg("evaluate", pred, pred, "--json")
    assert json.loads(r.stdout)["summary"]["dice"]["mean"] == pytest.approx(1.0)


def test_export_job_labels_to_nnunet(cli_job, tmp_path):
    out = tmp_path / "nnunet"
    aeseg("export", cli_job, "--out", out, "--format", "nnunet", "--labels", "pseudo_labels")
    ds = json.loads((out / "dataset.json").read_text())
    n = len(list((cli_job / "pseudo_labels").glob("*.seg.nrrd")))
    assert ds["numTraining"] == n and len(list((out / "imagesTr").iterdir())) == n
    r = aeseg("export", cli_job, "--out", out, "--format", "nnunet", check=False)
    assert r.returncode == 2 and "not empty" in r.stderr


def test_output_into_a_closed_pipe_ends_quietly():
    env = dict(os.environ, PYTHONPATH=str(ROOT / "AnnotationEfficientSeg"))
    p = subprocess.Popen([sys.executable, "-m", "aeseg", "methods"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # the reader is gone before the command writes (as ``aeseg methods | head -0``)
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 1 and "Traceback" not in err, err


def test_demo_help_and_devices():
    assert "phantom" in aeseg("demo", "--help").stdout
    info = json.loads(aeseg("devices", "--json").stdout)
    assert info["devices"][0] == "cpu" and info["default"] in info["devices"]
