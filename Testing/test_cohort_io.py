"""Reading images with their geometry, for every supported format, and cohort discovery."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import write_img

from aeseg.cohort import load_cohort, read_image, read_label
from aeseg.cohort.reading import write_image
from aeseg.errors import CohortError

OBLIQUE = tuple(np.round(sitk.VersorTransform((0, 0, 1), 0.3).GetMatrix(), 12))


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"])
def test_3d_round_trip_keeps_geometry(tmp_path, ext):
    arr = np.random.default_rng(0).normal(size=(4, 5, 6)).astype(np.float32)
    p = write_img(tmp_path / f"v{ext}", arr, spacing=(0.7, 0.9, 2.5), origin=(-10.0, 4.5, 33.0), direction=OBLIQUE)
    img = read_image(p)
    assert img.array.shape == (1, 4, 5, 6)
    np.testing.assert_allclose(img.array[0], arr, rtol=1e-6)
    g = img.geometry
    assert g.size == (6, 5, 4) and g.ndim == 3
    np.testing.assert_allclose(g.spacing, (0.7, 0.9, 2.5), rtol=1e-5)
    np.testing.assert_allclose(g.origin, (-10.0, 4.5, 33.0), atol=1e-4)
    np.testing.assert_allclose(g.direction, OBLIQUE, atol=1e-5)
    # and back out through write_image: same voxels, same grid
    out = tmp_path / f"out{ext}"
    write_image(out, img.array[0], g)
    back = read_image(out)
    np.testing.assert_allclose(back.array, img.array, rtol=1e-6)
    assert back.geometry.same_grid(g)


def test_ijk_to_lps_matches_simpleitk(tmp_path):
    p = write_img(tmp_path / "v.nrrd", np.zeros((3, 4, 5), np.float32), spacing=(0.5, 2.0, 3.0), origin=(1, 2, 3), direction=OBLIQUE)
    g = read_image(p).geometry
    ref = sitk.ReadImage(str(p))
    ijk = (4, 1, 2)
    lps = g.ijk_to_lps() @ np.array([*ijk, 1.0])
    np.testing.assert_allclose(lps[:3], ref.TransformIndexToPhysicalPoint(ijk), atol=1e-6)


def test_png_grey_and_rgb(tmp_path):
    grey = (np.arange(20 * 30).reshape(20, 30) % 256).astype(np.uint8)
    write_img(tmp_path / "g.png", grey)
    img = read_image(tmp_path / "g.png")
    assert img.array.shape == (1, 1, 20, 30) and img.geometry.ndim == 2
    np.testing.assert_array_equal(img.array[0, 0], grey)
    rgb = np.random.default_rng(1).integers(0, 255, (20, 30, 3)).astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / "c.png"))
    img = read_image(tmp_path / "c.png")
    assert img.array.shape == (3, 1, 20, 30)
    np.testing.assert_array_equal(np.moveaxis(img.array[:, 0], 0, -1), rgb)
    # a 2D geometry writes back as a 2D file
    write_image(tmp_path / "g2.nrrd", img.array[0], img.geometry)
    assert sitk.ReadImage(str(tmp_path / "g2.nrrd")).GetDimension() == 2


def _write_dicom_series(folder, arr, spacing, origin):
    folder.mkdir(parents=True)
    series_uid = "1.2.826.0.1.3680043.2.1125.1.42"
    for k in range(arr.shape[0]):
        sl = sitk.GetImageFromArray(arr[k].astype(np.int16))
        sl.SetSpacing(spacing[:2])
        pos = (origin[0], origin[1], origin[2] + k * spacing[2])
        for tag, val in {
            "0008|0060": "CT", "0020|000e": series_uid, "0020|000d": "1.2.826.0.1.3680043.2.1125.1.41",
            "0020|0032": "\\".join(f"{v:.4f}" for v in pos), "0020|0037": "1\\0\\0\\0\\1\\0",
            "0020|0013": str(k + 1), "0028|0030": f"{spacing[1]:.4f}\\{spacing[0]:.4f}", "0018|0050": f"{spacing[2]:.4f}",
            "0008|0018": f"{series_uid}.{k + 1}",
        }.items():
            sl.SetMetaData(tag, val)
        w = sitk.ImageFileWriter()
        w.KeepOriginalImageUIDOn()
        w.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        w.Execute(sl)


def test_dicom_series_folder(tmp_path):
    arr = np.random.default_rng(2).integers(-100, 100, (5, 8, 9)).astype(np.int16)
    _write_dicom_series(tmp_path / "images" / "ct01", arr, (0.8, 0.6, 2.5), (-20.0, 10.0, 5.0))
    img = read_image(tmp_path / "images" / "ct01")
    np.testing.assert_array_equal(img.array[0], arr)
    np.testing.assert_allclose(img.geometry.spacing, (0.8, 0.6, 2.5), atol=1e-3)
    np.testing.assert_allclose(img.geometry.origin, (-20.0, 10.0, 5.0), atol=1e-3)
    co = load_cohort(tmp_path)  # a DICOM folder is one case, discovered by folder name
    assert [c.case_id for c in co.cases] == ["ct01"] and not co.problems


def test_multilabel_value_and_seg_nrrd(tmp_path):
    from aeseg.io.segmentation import Segment, write_seg_nrrd

    lab = np.zeros((3, 6, 7), np.uint8)
    lab[1, 1:3, 1:4] = 2
    lab[2, 4:6, 2:5] = 5
    p = write_img(tmp_path / "l.nii.gz", lab, spacing=(1, 1, 2))
    m2, g = read_label(p, 2)
    assert m2.sum() == 6 and m2[1, 1:3, 1:4].all()
    assert read_label(p)[0].sum() == 6 + 6
    write_seg_nrrd(tmp_path / "s.seg.nrrd", [Segment("A", lab == 2), Segment("B", lab > 0)], g)
    a, ga = read_label(tmp_path / "s.seg.nrrd")  # first segment
    b, _ = read_label(tmp_path / "s.seg.nrrd", 2)  # overlapping second segment lives in another layer
    np.testing.assert_array_equal(a, lab == 2)
    np.testing.assert_array_equal(b, lab > 0)
    assert ga.same_grid(g)


def test_discovery_roles_and_presence(tmp_path):
    z = np.zeros((4, 4), np.uint8)
    for sub, cid in (("present", "p1"), ("absent", "a1")):
        write_img(tmp_path / "images" / sub / f"{cid}.png", z)
    write_img(tmp_path / "images" / "x.png", z)
    one = z.copy()
    one[1, 1] = 1
    write_img(tmp_path / "labels" / "p1.png", one)
    write_img(tmp_path / "noisy_labels" / "x.png", one)
    write_img(tmp_path / "aux_masks" / "m.png", one)
    co = load_cohort(tmp_path)
    kinds = {c.case_id: (c.label_kind, c.presence) for c in co.cases}
    assert kinds == {"p1": ("clean", "present"), "a1": ("none", "absent"), "x": ("noisy", None)}
    assert len(co.aux_masks) == 1


def test_refined_label_counts_as_clean(tmp_path):
    from aeseg.io.segmentation import write_segmentation

    one = np.zeros((1, 4, 4), np.uint8)
    one[0, 1, 1] = 1
    write_img(tmp_path / "images" / "c.nrrd", one[0])
    write_img(tmp_path / "noisy_labels" / "c.nrrd", one[0])
    g = read_image(tmp_path / "images" / "c.nrrd").geometry
    write_segmentation(tmp_path / "refined" / "c.seg.nrrd", one, g)
    c = load_cohort(tmp_path).cases[0]
    assert c.label_kind == "clean" and c.refined and c.noisy_label is not None


def test_cohort_csv_reads_refined_and_truth_like_the_folders(tmp_path):
    """With a cohort.csv, a corrected label in refined/ counts as clean in any label format
    (one fixed in another editor and saved as NIfTI, not only Slicer's .seg.nrrd), truth/ is
    matched by case id, and a refined label for a case the CSV does not list is a problem."""
    one = np.zeros((4, 4), np.uint8)
    one[1, 1] = 1
    for cid in ("a", "b"):
        write_img(tmp_path / "images" / f"{cid}.nrrd", one)
        write_img(tmp_path / "noisy" / f"{cid}.nrrd", one)
    write_img(tmp_path / "refined" / "a.nii.gz", one)
    write_img(tmp_path / "truth" / "b.nrrd", one)
    (tmp_path / "cohort.csv").write_text("case,image,label,label_kind\n"
                                         "a,images/a.nrrd,noisy/a.nrrd,noisy\nb,images/b.nrrd,noisy/b.nrrd,noisy\n")
    co = load_cohort(tmp_path)
    a, b = co.cases
    assert (a.label_kind, a.refined, a.clean_label.name) == ("clean", True, "a.nii.gz")
    assert (b.label_kind, b.refined, b.truth.name, a.truth) == ("noisy", False, "b.nrrd", None)
    assert not co.problems
    write_img(tmp_path / "refined" / "z.nii.gz", one)
    msgs = [p.message for p in load_cohort(tmp_path).problems]
    assert msgs == ["refined label for case 'z', which cohort.csv does not list"]


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(CohortError, match="not found"):
        load_cohort(tmp_path / "nope")
    with pytest.raises(CohortError, match="images/"):
        load_cohort(tmp_path)


def test_colour_and_alpha_channels_from_the_pixels_and_from_the_header(tmp_path):
    """RGB(A) images read as 3 channels (alpha dropped), grey(+alpha) as 1; the header alone
    gives the same count (what aeseg predict checks before loading a model)."""
    import SimpleITK as sitk

    from aeseg.cohort.reading import image_channels, read_image
    from aeseg.errors import CohortError

    rng = np.random.default_rng(0)
    for comps, channels in ((1, 1), (2, 1), (3, 3), (4, 3)):
        pix = rng.integers(0, 255, (6, 7, comps), dtype=np.uint8)
        path = tmp_path / (f"c{comps}.nrrd" if comps == 2 else f"c{comps}.png")  # SimpleITK cannot read back a grey+alpha PNG
        img = sitk.GetImageFromArray(pix if comps > 1 else pix[..., 0], isVector=comps > 1)
        sitk.WriteImage(img, str(path))
        data = read_image(path)
        assert data.channels == channels == image_channels(path)
        np.testing.assert_array_equal(data.array[:, 0], np.moveaxis(pix[..., :channels], -1, 0))
    five = tmp_path / "five.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((6, 7, 5), np.float32), isVector=True), str(five))
    assert image_channels(five) is None
    with pytest.raises(CohortError, match="5 components per pixel"):
        read_image(five)
