"""Tests for aeseg.quality.metrics and aeseg.quality.evaluate."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial import cKDTree

from aeseg.cohort.reading import Geometry
from aeseg.errors import AesegError
from aeseg.io.segmentation import write_segmentation
from aeseg.quality.evaluate import evaluate_folders
from aeseg.quality.metrics import case_metrics, dice, summarize


def squares(shift_x: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Two 4×4 squares in a (1, 12, 12) volume, the second shifted by ``shift_x`` columns."""
    p = np.zeros((1, 12, 12), np.uint8)
    r = np.zeros_like(p)
    p[0, 2:6, 2:6] = 1
    r[0, 2:6, 2 + shift_x:6 + shift_x] = 1
    return p, r


# ---------------------------------------------------------------- Dice


def test_dice_hand_values():
    a = np.zeros((3, 4, 5), bool)
    b = np.zeros_like(a)
    a[1, 1, 1:5] = True  # 4 voxels
    b[1, 1, 3:5] = True  # 2 voxels, both inside a
    assert dice(a, b) == pytest.approx(2 * 2 / 6)
    assert dice(a, a) == 1.0
    assert dice(np.zeros_like(a), np.zeros_like(a)) == 1.0
    assert dice(a, np.zeros_like(a)) == 0.0
    # non-zero values count as foreground
    assert dice(a.astype(np.uint8) * 7, b) == pytest.approx(2 / 3)


def test_dice_shape_mismatch():
    with pytest.raises(ValueError, match="shapes differ"):
        dice(np.zeros((2, 3)), np.zeros((3, 2)))


def test_numpy_dice_agrees_with_monai():
    import torch
    from monai.metrics import compute_dice

    rng = np.random.default_rng(0)
    for shape in [(6, 9, 7), (1, 16, 16), (20, 20)]:
        for fill in (0.1, 0.5):
            a = rng.random(shape) < fill
            b = ndimage.binary_dilation(a) & (rng.random(shape) < 0.8)
            ours = dice(a, b)
            theirs = compute_dice(torch.from_numpy(a[None, None].astype(np.float32)),
                                  torch.from_numpy(b[None, None].astype(np.float32)),
                                  include_background=True, ignore_empty=False).item()
            assert ours == pytest.approx(theirs, abs=1e-6)
            assert case_metrics(a, b, (1.0, 1.0, 1.0))["dice"] == pytest.approx(ours, abs=1e-6)


# ---------------------------------------------------------------- distances with spacing


def test_shifted_squares_anisotropic_hand_values():
    """Squares rows 2-5 × cols 2-5 vs cols 3-6, spacing x=2 mm, y=1 mm.

    Edge pixels of each square: 12. Directed distances pred→ref: the 6 top/bottom pixels
    in columns 3-5 lie on the other edge (0); the 2 corners of column 2 and the 2 middle
    pixels of column 2 are one column (2 mm) from ref's edge; the 2 middle pixels of
    column 5 are one row (1 mm) from ref's top/bottom edge. By symmetry the other
    direction is the same. ASSD = (4·2 + 2·1)/12 = 10/12 mm; 95th percentile = 2 mm.
    Dice = 2·12/32 = 0.75. With x and y spacings swapped the 2 mm distances become 1 mm
    and the 1 mm ones too: ASSD = 6/12, HD95 = 1 mm.
    """
    p, r = squares()
    m = case_metrics(p, r, (2.0, 1.0, 5.0))  # z spacing irrelevant for one slice
    assert m["dice"] == pytest.approx(0.75)
    assert m["hd95"] == pytest.approx(2.0, abs=1e-5)
    assert m["assd"] == pytest.approx(10 / 12, abs=1e-5)
    assert m["ravd"] == 0.0
    swapped = case_metrics(p, r, (1.0, 2.0, 5.0))
    assert swapped["hd95"] == pytest.approx(1.0, abs=1e-5)
    assert swapped["assd"] == pytest.approx(0.5, abs=1e-5)


def test_single_slice_measured_as_2d():
    """(1, Y, X) equals the (Y, X) result; as a 3D volume every voxel would be surface."""
    p, r = squares()
    vol = case_metrics(p, r, (2.0, 1.0, 1.0))
    flat = case_metrics(p[0], r[0], (2.0, 1.0))
    for k in ("dice", "hd95", "assd", "ravd"):
        assert vol[k] == pytest.approx(flat[k], abs=1e-6)
    # Guard: a naive 3D treatment (whole mask = surface) gives a different ASSD here.
    naive = _brute_force(p.astype(bool), r.astype(bool), (1.0, 1.0, 2.0), erode=False)
    assert naive[1] != pytest.approx(vol["assd"], abs=1e-3)


@pytest.mark.parametrize("axis, spacing_mm", [(0, 3.0), (1, 0.8), (2, 0.5)])
def test_axis_order_with_anisotropic_spacing(axis, spacing_mm):
    """One-voxel-thick plates 2 voxels apart along one array axis: every surface distance
    is 2 × that axis's spacing. Array axes (z, y, x) ↔ spacing_xyz = (0.5, 0.8, 3.0)."""
    shape = (8, 9, 10)
    p = np.zeros(shape, np.uint8)
    r = np.zeros(shape, np.uint8)
    sl_p = [slice(2, 6)] * 3
    sl_r = [slice(2, 6)] * 3
    sl_p[axis] = slice(2, 3)
    sl_r[axis] = slice(4, 5)
    p[tuple(sl_p)] = 1
    r[tuple(sl_r)] = 1
    m = case_metrics(p, r, (0.5, 0.8, 3.0))
    assert m["hd95"] == pytest.approx(2 * spacing_mm, abs=1e-5)
    assert m["assd"] == pytest.approx(2 * spacing_mm, abs=1e-5)
    assert m["dice"] == 0.0


def test_hd95_ignores_a_single_outlier():
    """A 10×10 square (36 edge pixels) vs the same square plus one far pixel.

    pred→ref distances: 36 zeros and one outlier at 8 columns × 1.5 mm = 12 mm; the 95th
    percentile (linear, position 0.95·36 = 34.2) is 0, while the maximum would be 12.
    ref→pred: all 0. ASSD = 12 / (37 + 36) mm.
    """
    ref = np.zeros((20, 30), np.uint8)
    ref[5:15, 5:15] = 1
    pred = ref.copy()
    pred[10, 22] = 1  # column 22: 8 columns right of the square's edge at column 14
    m = case_metrics(pred, ref, (1.5, 1.0))
    assert m["hd95"] == pytest.approx(0.0, abs=1e-6)
    assert m["assd"] == pytest.approx(12.0 / 73, abs=1e-5)
    assert m["ravd"] == pytest.approx(1 / 100)


def _brute_force(p: np.ndarray, r: np.ndarray, spacing_zyx, erode: bool = True) -> tuple[float, float]:
    """Independent HD95/ASSD: surface = mask minus its erosion, nearest neighbour by k-d tree."""
    def surface(m):
        return m & ~ndimage.binary_erosion(m) if erode else m

    sp = np.asarray(spacing_zyx, float)
    a = np.argwhere(surface(p)) * sp
    b = np.argwhere(surface(r)) * sp
    d_ab = cKDTree(b).query(a)[0]
    d_ba = cKDTree(a).query(b)[0]
    hd95 = max(np.percentile(d_ab, 95), np.percentile(d_ba, 95))
    assd = np.concatenate([d_ab, d_ba]).mean()
    return float(hd95), float(assd)


def test_3d_boxes_against_brute_force():
    shape = (12, 14, 16)
    p = np.zeros(shape, bool)
    r = np.zeros(shape, bool)
    p[2:8, 3:10, 4:12] = True
    r[4:10, 4:12, 3:9] = True
    r[5:7, 10:13, 9:14] = True  # an appendage to make the distances non-trivial
    spacing_xyz = (0.6, 1.1, 2.5)
    m = case_metrics(p, r, spacing_xyz)
    hd95, assd = _brute_force(p, r, spacing_xyz[::-1])
    assert m["hd95"] == pytest.approx(hd95, rel=1e-4)
    assert m["assd"] == pytest.approx(assd, rel=1e-4)
    assert m["dice"] == pytest.approx(dice(p, r))
    assert m["ravd"] == pytest.approx(abs(p.sum() - r.sum()) / r.sum())
    # the wrong order (spacing given as array order) must give other values
    wrong = case_metrics(p, r, spacing_xyz[::-1])
    assert wrong["assd"] != pytest.approx(m["assd"], rel=1e-3)


def test_ravd_hand_values():
    ref = np.zeros((1, 8, 8), np.uint8)
    ref[0, :4, :4] = 1  # 16 voxels
    small = np.zeros_like(ref)
    small[0, :3, :4] = 1  # 12
    big = np.zeros_like(ref)
    big[0, :5, :4] = 1  # 20
    assert case_metrics(small, ref, (1, 1, 1))["ravd"] == pytest.approx(0.25)
    assert case_metrics(big, ref, (1, 1, 1))["ravd"] == pytest.approx(0.25)
    assert case_metrics(ref, ref, (1, 1, 1))["ravd"] == 0.0


def test_empty_masks():
    z = np.zeros((3, 6, 6), np.uint8)
    m = z.copy()
    m[1, 2:4, 2:4] = 1
    both = case_metrics(z, z, (1, 1, 1))
    assert both == {"dice": 1.0, "hd95": 0.0, "assd": 0.0, "ravd": 0.0}
    no_pred = case_metrics(z, m, (1, 1, 1))
    assert no_pred["dice"] == 0.0 and math.isnan(no_pred["hd95"]) and math.isnan(no_pred["assd"])
    assert no_pred["ravd"] == 1.0
    no_ref = case_metrics(m, z, (1, 1, 1))
    assert no_ref["dice"] == 0.0 and math.isnan(no_ref["hd95"]) and math.isnan(no_ref["assd"])
    assert math.isnan(no_ref["ravd"])


def test_shape_mismatch_rejected():
    with pytest.raises(ValueError, match="shape"):
        case_metrics(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)), (1, 1, 1))


# ---------------------------------------------------------------- summarize


def test_summarize_ignores_nan():
    rows = [
        {"case": "a", "dice": 0.5, "hd95": 2.0, "flag": True},
        {"case": "b", "dice": 0.7, "hd95": math.nan, "flag": False},
        {"case": "c", "dice": 0.9, "hd95": 4.0, "flag": False},
    ]
    s = summarize(rows)
    assert s["count"] == 3
    assert s["dice"]["mean"] == pytest.approx(0.7)
    assert s["dice"]["sd"] == pytest.approx(0.2)  # sample SD of 0.5, 0.7, 0.9
    assert s["dice"]["n"] == 3
    assert s["hd95"] == {"mean": pytest.approx(3.0), "sd": pytest.approx(math.sqrt(2)), "n": 2}
    assert "case" not in s and "flag" not in s
    one = summarize([{"dice": 0.4}])
    assert one["dice"]["mean"] == 0.4 and math.isnan(one["dice"]["sd"])
    assert summarize([]) == {"count": 0}


# ---------------------------------------------------------------- evaluate_folders


def _write_nifti(path, arr_zyx, spacing_xyz=(0.7, 0.9, 2.0), origin=(1.0, -2.0, 3.0)):
    img = sitk.GetImageFromArray(arr_zyx.astype(np.uint8))
    img.SetSpacing(spacing_xyz)
    img.SetOrigin(origin)
    sitk.WriteImage(img, str(path))


def _geom(shape_zyx, spacing_xyz=(0.7, 0.9, 2.0), origin=(1.0, -2.0, 3.0)) -> Geometry:
    return Geometry(tuple(shape_zyx[::-1]), spacing_xyz, origin, (1, 0, 0, 0, 1, 0, 0, 0, 1))


def test_evaluate_folders(tmp_path):
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir()
    pred_dir.mkdir()
    shape = (5, 10, 12)
    r1 = np.zeros(shape, np.uint8)
    r1[1:4, 2:8, 3:9] = 1
    r2 = np.zeros(shape, np.uint8)
    r2[2, 3:6, 3:6] = 1
    _write_nifti(ref_dir / "case01.nii.gz", r1)
    _write_nifti(ref_dir / "case02.nrrd", r2)
    p1 = np.roll(r1, 1, axis=2)
    write_segmentation(pred_dir / "case01.seg.nrrd", p1, _geom(shape))  # .seg.nrrd vs NIfTI
    _write_nifti(pred_dir / "case02.nii.gz", r2)
    _write_nifti(pred_dir / "extra.nii.gz", r2)
    (pred_dir / "notes.txt").write_text("not a label")

    rows, summary = evaluate_folders(pred_dir, ref_dir)
    assert [r["case"] for r in rows] == ["case01", "case02"]
    expected = case_metrics(p1, r1, (0.7, 0.9, 2.0))
    for k, v in expected.items():
        assert rows[0][k] == pytest.approx(v, abs=1e-6)
    assert rows[0]["dice"] < 1.0
    assert rows[1]["dice"] == 1.0 and rows[1]["hd95"] == 0.0
    assert summary["count"] == 2
    assert summary["extra_predictions"] == 1
    assert summary["dice"]["mean"] == pytest.approx((rows[0]["dice"] + 1.0) / 2)


def test_evaluate_folders_missing_prediction(tmp_path):
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir()
    pred_dir.mkdir()
    m = np.ones((2, 4, 4), np.uint8)
    for c in ("a", "b", "c"):
        _write_nifti(ref_dir / f"{c}.nii.gz", m)
    _write_nifti(pred_dir / "b.nii.gz", m)
    with pytest.raises(AesegError, match=r"2 reference case\(s\).*a, c"):
        evaluate_folders(pred_dir, ref_dir)


def test_evaluate_folders_geometry_mismatch(tmp_path):
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir()
    pred_dir.mkdir()
    m = np.ones((2, 4, 4), np.uint8)
    _write_nifti(ref_dir / "case7.nii.gz", m)
    _write_nifti(pred_dir / "case7.nii.gz", m, spacing_xyz=(0.7, 0.9, 3.0))
    with pytest.raises(AesegError, match="case7.*spacing"):
        evaluate_folders(pred_dir, ref_dir)
