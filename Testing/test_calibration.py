"""Output calibration to the given labels' total area (``engine.threshold=label_area``)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from aeseg.cohort import load_cohort, read_label
from aeseg.quality.calibration import area_threshold, label_area_offset, logit, shift

from conftest import aeseg


def test_area_threshold_marks_the_asked_area():
    p = np.array([0.9, 0.2, 0.7, 0.55, 0.1], dtype=np.float32)
    assert area_threshold(p, 2) == pytest.approx(0.7)
    assert [int((p >= area_threshold(p, a)).sum()) for a in (0, 1, 2, 3, 5, 9)] == [0, 1, 2, 3, 5, 5]


def test_the_logit_offset_moves_the_decision_to_the_threshold_and_keeps_the_order():
    rng = np.random.default_rng(0)
    probs = [rng.random((2, 5, 5)).astype(np.float32) for _ in range(3)]
    labels = [(rng.random((2, 5, 5)) < 0.2).astype(np.uint8) for _ in range(3)]
    t, off, area = label_area_offset(zip(probs, labels))
    assert area == sum(int(lab.sum()) for lab in labels)
    assert off == pytest.approx(math.log(t / (1 - t)))
    shifted = [shift(p, off) for p in probs]
    assert sum(int((s > 0.5).sum()) for s in shifted) == area  # continuous values: no ties
    for p, s in zip(probs, shifted):
        np.testing.assert_array_equal(s > 0.5, p > t)  # t lies between two probabilities
        assert s.dtype == np.float32 and 0 <= s.min() and s.max() <= 1
        order = np.argsort(p.ravel(), kind="stable")
        assert np.all(np.diff(s.ravel()[order]) >= 0)  # monotone: a probability map stays one
    # hand-computed: t = 0.2 → offset logit(0.2) = −ln 4; p = 0.5 becomes σ(ln 4) = 0.8
    assert shift(np.array([0.5], np.float32), logit(0.2))[0] == pytest.approx(0.8, abs=1e-6)
    assert shift(probs[0], 0.0) is probs[0]
    # an empty or a full label: nothing or everything marked
    for lab, want in ((np.zeros((2, 5, 5)), 0), (np.ones((2, 5, 5)), 50)):
        _, off, _ = label_area_offset([(probs[0], lab)])
        assert int((shift(probs[0], off) > 0.5).sum()) == want
    with pytest.raises(ValueError, match="no labelled training case"):
        label_area_offset([])


def test_a_calibrated_job_marks_its_training_labels_area_and_predict_applies_the_same_threshold(tiny_cohort, tmp_path):
    job = tmp_path / "job"
    aeseg("train", tiny_cohort, "--method", "supervised", "--labels", "all", "--out", job, "--epochs", "2",
          "--no-progress", "--set", "data.size=32", "--set", "features=8", "--set", "depth=3",
          "--set", "engine.threshold=label_area")
    cal = json.loads((job / "model" / "model.json").read_text())["calibration"]
    assert cal["kind"] == "label_area" and 0.0 < cal["threshold"] < 1.0
    co = load_cohort(tiny_cohort)
    labelled = [c for c in co.cases if c.split == "train" and c.label is not None]
    given = sum(int(read_label(c.label)[0].sum()) for c in labelled)
    marked = sum(int(read_label(job / "pseudo_labels" / f"{c.case_id}.seg.nrrd")[0].sum()) for c in labelled)
    assert cal["label_voxels"] == given and cal["cases"] == len(labelled)
    assert abs(marked - given) <= max(3, given // 200)  # ties at t only
    notes = [json.loads(line) for line in (job / "events.jsonl").read_text().splitlines()]
    assert any(e.get("type") == "note" and "output threshold" in e.get("message", "") for e in notes)
    # the saved model carries the threshold: aeseg predict gives the job's own masks
    test = next(c for c in co.cases if c.split == "test")
    aeseg("predict", "--model", job, test.image, "--out", tmp_path / "pred")
    np.testing.assert_array_equal(read_label(tmp_path / "pred" / f"{test.case_id}.seg.nrrd")[0],
                                  read_label(job / "pseudo_labels" / f"{test.case_id}.seg.nrrd")[0])


def test_a_model_with_a_damaged_calibration_is_one_clear_error_with_nothing_written(cli_job, tiny_cohort, tmp_path):
    import shutil

    from aeseg.engine.predict import predict_images
    from aeseg.errors import JobError

    job = tmp_path / "job"
    shutil.copytree(cli_job / "model", job / "model")
    spec = json.loads((job / "model" / "model.json").read_text())
    assert spec["calibration"] is None  # a job without threshold=label_area keeps 0.5
    img = next(c.image for c in load_cohort(tiny_cohort).cases if c.split == "test")
    for bad in ({"logit_offset": "high"}, {"logit_offset": float("nan")}, ["label_area"]):
        (job / "model" / "model.json").write_text(json.dumps({**spec, "calibration": bad}))
        with pytest.raises(JobError, match="calibration"):
            predict_images(job, [img], tmp_path / "out")
        assert not (tmp_path / "out").exists()
