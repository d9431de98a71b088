"""Accepted corrections written to cohort/refined/, earlier versions kept, read back with slicerio."""

import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "AnnotationEfficientSeg"))

slicerio = pytest.importorskip("slicerio")

from AnnotationEfficientSegLib.refined import (  # noqa: E402
    history_paths, read_refined, refined_path, write_refined,
)


def _geometry():
    # oblique direction, anisotropic spacing, non-zero origin: what a real scan has
    c, s = np.cos(0.3), np.sin(0.3)
    direction = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    m = np.eye(4)
    m[:3, :3] = direction @ np.diag([0.8, 0.9, 2.5])
    m[:3, 3] = [-120.5, 33.0, 7.25]
    return m


def _mask(shape=(5, 12, 10), box=(1, 3, 2, 8, 4, 9)):
    k0, k1, j0, j1, i0, i1 = box
    m = np.zeros(shape, dtype=np.uint8)  # Slicer order (k, j, i)
    m[k0:k1, j0:j1, i0:i1] = 1
    return m


def test_write_reads_back_with_geometry_and_metadata(tmp_path):
    m = _geometry()
    mask = _mask()
    res = write_refined(tmp_path, "case 01", mask, m, tags={"AESeg.Job": "/jobs/a", "AESeg.Score": 0.25})
    assert res.path == refined_path(tmp_path, "case 01") and res.previous is None and res.voxels == mask.sum()

    seg = slicerio.read_segmentation(str(res.path))
    assert np.allclose(seg["ijkToLPS"], m)
    assert seg["voxels"].shape == (10, 12, 5)  # (i, j, k) on disk
    (segment,) = seg["segments"]
    assert segment["name"] == "Refined"
    assert segment["status"] == "completed"  # Slicer's Segmentation.Status tag
    assert segment["tags"]["AESeg.Job"] == "/jobs/a" and segment["tags"]["AESeg.Score"] == "0.25"
    assert np.array_equal(slicerio.segment_mask(seg, "Refined"), np.transpose(mask, (2, 1, 0)).astype(bool))

    back, m2, meta = read_refined(res.path)
    assert np.array_equal(back, mask.astype(bool)) and np.allclose(m2, m) and meta["name"] == "Refined"


def test_a_refined_label_gets_a_plain_files_permissions(tmp_path):
    """Not the owner-only mode of the temporary file it is written through: a colleague
    who may read the cohort folder (umask 027: the group) can read the refined labels."""
    import os
    import stat

    old = os.umask(0o027)
    try:
        res = write_refined(tmp_path, "c1", _mask(), _geometry())
    finally:
        os.umask(old)
    assert stat.S_IMODE(res.path.stat().st_mode) == 0o640


def test_earlier_versions_are_kept_never_overwritten(tmp_path):
    m = _geometry()
    first, second, third = _mask(), _mask(box=(0, 5, 0, 4, 0, 4)), _mask(box=(2, 3, 5, 6, 5, 6))
    write_refined(tmp_path, "c1", first, m)
    r2 = write_refined(tmp_path, "c1", second.astype(bool), m)
    assert r2.previous is not None and r2.previous.parent == tmp_path / "refined" / "history"
    assert r2.previous.name.startswith("c1.") and r2.previous.name.endswith("Z.seg.nrrd")
    time.sleep(0.002)
    r3 = write_refined(tmp_path, "c1", third, m)
    hist = history_paths(tmp_path, "c1")
    assert hist == sorted([r2.previous, r3.previous]) and len(set(hist)) == 2

    # current = third; history holds first and second, in order
    assert np.array_equal(read_refined(refined_path(tmp_path, "c1"))[0], third.astype(bool))
    assert np.array_equal(read_refined(hist[0])[0], first.astype(bool))
    assert np.array_equal(read_refined(hist[1])[0], second.astype(bool))
    # another case's history is separate; no temporary files are left behind
    write_refined(tmp_path, "c10", first, m)
    assert history_paths(tmp_path, "c10") == [] and len(history_paths(tmp_path, "c1")) == 2
    assert not [p for p in (tmp_path / "refined").rglob(".tmp-*")]


def test_2d_mask_and_invalid_input(tmp_path):
    m = np.diag([0.5, 0.5, 1.0, 1.0])
    mask2d = np.zeros((6, 7), dtype=np.uint8)
    mask2d[2:4, 1:5] = 1
    res = write_refined(tmp_path, "slice", mask2d, m)
    back, _, _ = read_refined(res.path)
    assert back.shape == (1, 6, 7) and back.sum() == 8

    with pytest.raises(ValueError, match="binary"):
        write_refined(tmp_path, "x", mask2d * 3, m)
    with pytest.raises(ValueError, match="invertible"):
        write_refined(tmp_path, "x", mask2d, np.zeros((4, 4)))
    for bad in ("", "../evil", "a/b", ".hidden"):
        with pytest.raises(ValueError, match="case name"):
            write_refined(tmp_path, bad, mask2d, m)
    assert not refined_path(tmp_path, "x").exists()


def test_a_hand_placed_refined_label_in_another_format_moves_to_history(tmp_path):
    """Accepting a case whose refined label was put in refined/ by hand as NIfTI (or .mhd + .raw)
    leaves one refined label per case: the old files move, unchanged and still readable, to history."""
    import SimpleITK as sitk

    from aeseg.cohort.manifest import discover

    img = sitk.GetImageFromArray(np.zeros((5, 12, 10), np.float32))
    (tmp_path / "images").mkdir()
    (tmp_path / "refined").mkdir()
    hand = np.zeros((5, 12, 10), np.uint8)
    hand[2, 3:6, 3:6] = 1
    for case in ("c1", "c2", "c10"):
        sitk.WriteImage(img, str(tmp_path / "images" / f"{case}.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(hand), str(tmp_path / "refined" / "c1.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(hand), str(tmp_path / "refined" / "c2.mhd"))  # + c2.raw
    sitk.WriteImage(sitk.GetImageFromArray(hand), str(tmp_path / "refined" / "c10.nii.gz"))
    assert (tmp_path / "refined" / "c2.raw").is_file()

    r1 = write_refined(tmp_path, "c1", _mask(), _geometry())
    r2 = write_refined(tmp_path, "c2", _mask(), _geometry())
    # one refined label per case, no cohort problem, the new file is the case's clean label
    cohort = discover(tmp_path)
    assert cohort.problems == []
    assert cohort.case("c1").clean_label == r1.path and cohort.case("c2").clean_label == r2.path
    assert cohort.case("c10").clean_label == tmp_path / "refined" / "c10.nii.gz"  # another case: untouched
    assert sorted(p.name for p in (tmp_path / "refined").iterdir()) == [
        "c1.seg.nrrd", "c10.nii.gz", "c2.seg.nrrd", "history"]
    # the old files are kept unchanged, the .mhd with its data file, and still read
    assert r1.previous is None and r2.previous is None
    assert sorted(p.name for p in r2.set_aside.iterdir()) == ["c2.mhd", "c2.raw"]
    for kept in (r1.set_aside / "c1.nii.gz", r2.set_aside / "c2.mhd"):
        assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(kept))), hand)
    assert history_paths(tmp_path, "c1") == [r1.set_aside] and history_paths(tmp_path, "c10") == []
    assert "c2.mhd, c2.raw moved to refined/history/" in r2.message("c2")

    # accepting again keeps the .seg.nrrd as before, after the folder in history order
    time.sleep(0.002)
    r3 = write_refined(tmp_path, "c1", _mask(box=(0, 2, 0, 2, 0, 2)), _geometry())
    assert r3.set_aside is None and history_paths(tmp_path, "c1") == [r1.set_aside, r3.previous]
    assert "earlier version kept in refined/history/c1." in r3.message("c1")


def test_history_of_one_case_does_not_take_a_case_whose_name_extends_it(tmp_path):
    write_refined(tmp_path, "c1.x", _mask(), _geometry())
    write_refined(tmp_path, "c1.x", _mask(), _geometry())
    assert history_paths(tmp_path, "c1") == [] and len(history_paths(tmp_path, "c1.x")) == 1
