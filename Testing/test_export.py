"""Tests for aeseg.io.export: NIfTI, .seg.nrrd and nnU-Net exports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from aeseg.cohort.reading import Geometry, read_image, read_label
from aeseg.errors import AesegError
from aeseg.io.export import ExportItem, export_labels
from aeseg.io.segmentation import write_segmentation

# A rotated, anisotropic 3D grid (direction: 90° about z, x flipped).
DIR_3D = (0.0, -1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
SPACING_3D = (0.6, 0.9, 2.5)
ORIGIN_3D = (-10.0, 4.0, 7.5)


def _label_3d(path: Path) -> tuple[np.ndarray, Geometry]:
    """Multi-valued (0, 2, 3) 3D label; returns the expected binary mask and geometry."""
    arr = np.zeros((5, 7, 9), np.uint8)
    arr[1:4, 2:5, 1:6] = 2
    arr[2, 5, 6:8] = 3
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(SPACING_3D)
    img.SetOrigin(ORIGIN_3D)
    img.SetDirection(DIR_3D)
    sitk.WriteImage(img, str(path))
    return (arr != 0).astype(np.uint8), Geometry.from_sitk(img)


def _label_2d(path: Path) -> tuple[np.ndarray, Geometry]:
    arr = np.zeros((6, 8), np.uint8)
    arr[1:4, 2:7] = 1
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.7, 1.3))
    img.SetOrigin((2.0, -3.0))
    sitk.WriteImage(img, str(path))
    return arr[None], Geometry.from_sitk(img)


def _image_like(path: Path, geom: Geometry, seed: int = 0) -> np.ndarray:
    arr = np.random.default_rng(seed).normal(size=geom.shape_zyx).astype(np.float32)
    img = sitk.GetImageFromArray(arr if geom.ndim == 3 else arr[0])
    sitk.WriteImage(geom.apply_to(img), str(path))
    return arr


@pytest.fixture()
def src(tmp_path) -> dict:
    d = tmp_path / "src"
    d.mkdir()
    m3, g3 = _label_3d(d / "vol.nii.gz")
    m2, g2 = _label_2d(d / "slice.nii.gz")
    return {"dir": d, "vol": (m3, g3), "slice": (m2, g2)}


def test_export_nifti_round_trip(src, tmp_path):
    items = [ExportItem("vol", src["dir"] / "vol.nii.gz"), ExportItem("slice", src["dir"] / "slice.nii.gz")]
    out = tmp_path / "out"
    paths = export_labels(items, out, "nifti")
    assert paths == [out / "vol.nii.gz", out / "slice.nii.gz"]
    for case in ("vol", "slice"):
        mask, geom = src[case]
        img = sitk.ReadImage(str(out / f"{case}.nii.gz"))
        assert img.GetPixelID() == sitk.sitkUInt8
        assert img.GetDimension() == geom.ndim  # 2D stays 2D
        back = sitk.GetArrayFromImage(img)
        back = back[None] if back.ndim == 2 else back
        np.testing.assert_array_equal(back, mask)  # binarised to 0/1
        assert set(np.unique(back)) == {0, 1}
        assert Geometry.from_sitk(img).same_grid(geom)
    assert Geometry.from_sitk(sitk.ReadImage(str(out / "vol.nii.gz"))).direction == pytest.approx(DIR_3D)


def test_export_seg_nrrd_round_trip(src, tmp_path):
    items = [ExportItem("vol", src["dir"] / "vol.nii.gz"), ExportItem("slice", src["dir"] / "slice.nii.gz")]
    out = tmp_path / "out"
    paths = export_labels(items, out, "seg.nrrd", segment_name="Liver")
    assert [p.name for p in paths] == ["vol.seg.nrrd", "slice.seg.nrrd"]
    for case in ("vol", "slice"):
        mask, geom = src[case]
        back, back_geom = read_label(out / f"{case}.seg.nrrd")
        np.testing.assert_array_equal(back, mask)
        assert back_geom.same_grid(geom), back_geom.describe_difference(geom)
        seg = slicerio.read_segmentation(str(out / f"{case}.seg.nrrd"))
        assert [s["name"] for s in seg["segments"]] == ["Liver"]


def test_export_from_seg_nrrd_to_nifti(src, tmp_path):
    mask, geom = src["vol"]
    write_segmentation(tmp_path / "in.seg.nrrd", mask, geom, name="Refined")
    paths = export_labels([ExportItem("vol", tmp_path / "in.seg.nrrd")], tmp_path / "out", "nifti")
    back, back_geom = read_label(paths[0])
    np.testing.assert_array_equal(back, mask)
    assert back_geom.same_grid(geom)


def test_export_nnunet(src, tmp_path):
    d = src["dir"]
    mask, geom = src["vol"]
    vol_img = _image_like(d / "vol_img.nii.gz", geom, seed=1)
    _label_3d(d / "vol2.nii.gz")
    _image_like(d / "vol2_img.nii.gz", geom, seed=2)
    items = [ExportItem("vol", d / "vol.nii.gz", d / "vol_img.nii.gz"),
             ExportItem("vol2", d / "vol2.nii.gz", d / "vol2_img.nii.gz")]
    out = tmp_path / "nn"
    paths = export_labels(items, out, "nnunet", target_name="liver", channel_names={"0": "CT"})
    rel = sorted(str(p.relative_to(out)) for p in paths)
    assert rel == ["dataset.json", "imagesTr/vol2_0000.nii.gz", "imagesTr/vol_0000.nii.gz",
                   "labelsTr/vol.nii.gz", "labelsTr/vol2.nii.gz"]
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == rel  # nothing else
    ds = json.loads((out / "dataset.json").read_text())
    assert ds == {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1},
                  "numTraining": 2, "file_ending": ".nii.gz"}
    img = read_image(out / "imagesTr" / "vol_0000.nii.gz")
    np.testing.assert_allclose(img.array[0], vol_img)
    lab, lab_geom = read_label(out / "labelsTr" / "vol.nii.gz")
    raw = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / "vol.nii.gz")))
    assert set(np.unique(raw)) == {0, 1}
    np.testing.assert_array_equal(lab, mask)
    assert lab_geom.same_grid(img.geometry) and lab_geom.same_grid(geom)


def test_export_nnunet_rgb_2d(tmp_path):
    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 10, 120, 250
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / "p.png"))
    lab = np.zeros((6, 8), np.uint8)
    lab[2:4, 3:6] = 255
    sitk.WriteImage(sitk.GetImageFromArray(lab), str(tmp_path / "p_mask.png"))
    out = tmp_path / "nn"
    export_labels([ExportItem("p", tmp_path / "p_mask.png", tmp_path / "p.png")], out, "nnunet")
    for c, value in enumerate((10, 120, 250)):
        img = sitk.ReadImage(str(out / "imagesTr" / f"p_{c:04d}.nii.gz"))
        assert img.GetDimension() == 2
        assert np.all(sitk.GetArrayFromImage(img) == value)
    assert not (out / "imagesTr" / "p_0003.nii.gz").exists()
    back = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / "p.nii.gz")))
    np.testing.assert_array_equal(back, (lab > 0).astype(np.uint8))
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["channel_names"] == {"0": "R", "1": "G", "2": "B"}
    assert ds["labels"] == {"background": 0, "target": 1} and ds["numTraining"] == 1


def test_nnunet_needs_images(src, tmp_path):
    items = [ExportItem("vol", src["dir"] / "vol.nii.gz"), ExportItem("slice", src["dir"] / "slice.nii.gz")]
    out = tmp_path / "nn"
    with pytest.raises(AesegError, match="no image for: vol, slice"):
        export_labels(items, out, "nnunet")
    assert not out.exists() or not any(out.iterdir())  # nothing written


def test_nnunet_label_off_grid(src, tmp_path):
    d = src["dir"]
    _, geom = src["vol"]
    shifted = Geometry(geom.size, geom.spacing, (0.0, 0.0, 0.0), geom.direction)
    _image_like(d / "img.nii.gz", shifted)
    with pytest.raises(AesegError, match="'vol'.*origin"):
        export_labels([ExportItem("vol", d / "vol.nii.gz", d / "img.nii.gz")], tmp_path / "nn", "nnunet")


def test_refuses_non_empty_folder(src, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user file")
    items = [ExportItem("vol", src["dir"] / "vol.nii.gz")]
    with pytest.raises(AesegError, match="not empty"):
        export_labels(items, out, "nifti")
    assert not (out / "vol.nii.gz").exists()
    paths = export_labels(items, out, "nifti", overwrite=True)
    assert paths[0].is_file() and (out / "keep.txt").read_text() == "user file"


@pytest.mark.parametrize("fmt", ["png", "nrrd", ""])
def test_bad_format(src, tmp_path, fmt):
    with pytest.raises(AesegError, match="nifti, seg.nrrd, nnunet"):
        export_labels([ExportItem("vol", src["dir"] / "vol.nii.gz")], tmp_path / "out", fmt)


def test_bad_case_ids(src, tmp_path):
    lab = src["dir"] / "vol.nii.gz"
    with pytest.raises(AesegError, match="twice"):
        export_labels([ExportItem("a", lab), ExportItem("a", lab)], tmp_path / "o1", "nifti")
    with pytest.raises(AesegError, match="file name"):
        export_labels([ExportItem("../escape", lab)], tmp_path / "o2", "nifti")
    with pytest.raises(AesegError, match="no cases"):
        export_labels([], tmp_path / "o3", "nifti")
