"""Phantom cohorts (aeseg.data.phantoms) and calibrated label corruption (aeseg.data.corruption).

Tiny sizes throughout: the whole file runs in well under a minute on 2 CPU cores.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from aeseg.cohort import load_cohort, read_image, read_label
from aeseg.data import phantoms as ph
from aeseg.data.corruption import calibrate_corruption, corrupt_mask, corrupt_masks, dice
from aeseg.errors import ConfigError

TINY = dict(n_train=6, n_val=2, n_test=3, size=40)
TINY_3D = dict(n_train=6, n_val=2, n_test=3, size=32, n_slices=4)


def tiny_config(task: str, seed: int = 0, **kw) -> ph.PhantomConfig:
    base = dict(TINY_3D if task == "noisy_organ" else TINY)
    base.update(kw)
    return ph.PhantomConfig(task, seed=seed, **base)


# expected label kinds of the train split of TINY configs: (clean, noisy, none)
EXPECTED_TRAIN = {
    "ellipse_us": (0, 0, 6),
    "organ_ct": (0, 0, 6),
    "noisy_organ": (1, 5, 0),  # default n_clean = max(1, min(4, 6 // 4)) = 1, setting noisy
    "lesion_pa": (1, 0, 5),  # 3 present train images, 5 % annotated → at least 1
    "domain_shift": (1, 0, 5),  # 3 source train cases, default n_clean = max(1, min(6, 3 // 3)) = 1
}


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory) -> dict[str, tuple[Path, ph.PhantomInfo]]:
    out = {}
    for task in ph.TASKS:
        root = tmp_path_factory.mktemp(task)
        out[task] = (root, ph.make_phantom_cohort(root, tiny_config(task)))
    return out


def _kinds(cohort, split):
    return tuple(cohort.count(k, split) for k in ("clean", "noisy", "none"))


@pytest.mark.parametrize("task", ph.TASKS)
def test_cohort_loads_with_expected_counts(cohorts, task):
    root, info = cohorts[task]
    cohort = load_cohort(root)
    assert cohort.from_csv
    errors = [p for p in cohort.problems if p.severity == "error"]
    assert not errors, [str(p) for p in errors]
    assert len(cohort.split("train")) == 6 and len(cohort.split("val")) == 2 and len(cohort.split("test")) == 3
    assert _kinds(cohort, "train") == EXPECTED_TRAIN[task]
    assert _kinds(cohort, "val") == (2, 0, 0)
    assert _kinds(cohort, "test") == (0, 0, 3)
    assert info.counts["train"] == dict(zip(("clean", "noisy", "none"), EXPECTED_TRAIN[task]))
    assert info.n_cases == 11
    for case in cohort.cases:
        assert case.truth is not None and case.truth.is_file(), case.case_id
        if case.label is not None:
            assert case.label.is_file()
    # test cases: their true label is only in truth/
    label_files = {p.name.split(".")[0] for d in ("labels", "noisy_labels") if (root / d).is_dir()
                   for p in (root / d).iterdir()}
    for case in cohort.split("test"):
        assert case.label is None
        assert case.case_id not in label_files


@pytest.mark.parametrize("task", ph.TASKS)
def test_images_labels_and_truth_share_geometry(cohorts, task):
    root, _ = cohorts[task]
    cohort = load_cohort(root)
    for case in cohort.cases:
        img = read_image(case.image)
        truth, tgeom = read_label(case.truth)
        assert img.geometry.same_grid(tgeom), (case.case_id, img.geometry.describe_difference(tgeom))
        assert truth.shape == img.array.shape[1:]
        assert img.geometry.ndim == (3 if task == "noisy_organ" else 2)
        assert np.all(np.isfinite(img.array)) and img.array.std() > 0
        if case.label is not None:
            label, lgeom = read_label(case.label)
            assert img.geometry.same_grid(lgeom)
            if case.label_kind == "clean":
                assert np.array_equal(label, truth)
        if task != "lesion_pa":
            assert truth.sum() > 0, case.case_id
    geom = read_image(cohort.cases[0].image).geometry
    if task == "ellipse_us":
        assert geom.spacing[0] != geom.spacing[1]  # anisotropic in-plane
    if task == "noisy_organ":
        assert geom.spacing == pytest.approx((1.2, 1.2, 3.0), rel=1e-5)
        assert any(abs(o) > 1 for o in geom.origin)
        assert geom.size == (32, 32, 4)


def test_noisy_labels_hit_calibrated_dice(cohorts):
    root, info = cohorts["noisy_organ"]
    cohort = load_cohort(root)
    measured = [dice(read_label(c.label)[0], read_label(c.truth)[0]) for c in cohort.cases if c.label_kind == "noisy"]
    assert len(measured) == 5
    assert info.noise_target == pytest.approx(0.62)
    assert info.noisy_mean_dice == pytest.approx(np.mean(measured), abs=1e-6)
    assert abs(info.noisy_mean_dice - 0.62) <= 0.02
    assert 0.0 < info.corruption_strength < 1.0


@pytest.mark.parametrize("setting,expected", [("semi", (1, 0, 5)), ("mixed", (1, 3, 2)), ("noisy", (1, 5, 0))])
def test_noisy_organ_settings(tmp_path, setting, expected):
    cfg = ph.PhantomConfig("noisy_organ", seed=2, n_train=6, n_val=1, n_test=1, size=32, n_slices=3,
                           setting=setting, noise=None if setting == "semi" else "low")
    info = ph.make_phantom_cohort(tmp_path, cfg)
    cohort = load_cohort(tmp_path)
    assert _kinds(cohort, "train") == expected
    if setting == "semi":
        assert info.noisy_mean_dice is None and info.corruption_strength is None
        assert not (tmp_path / "noisy_labels").exists()
    else:
        assert abs(info.noisy_mean_dice - 0.80) <= 0.03


def _read_all(root: Path) -> dict[str, np.ndarray]:
    cohort = load_cohort(root)
    out = {}
    for c in cohort.cases:
        out[f"img/{c.case_id}"] = read_image(c.image).array
        out[f"truth/{c.case_id}"] = read_label(c.truth)[0]
        if c.label is not None:
            out[f"label/{c.case_id}"] = read_label(c.label)[0]
    return out


@pytest.mark.parametrize("task", ["noisy_organ", "ellipse_us", "lesion_pa"])
def test_deterministic_for_a_seed(tmp_path, task):
    cfg = tiny_config(task, seed=5, n_train=4, n_val=1, n_test=1)
    ph.make_phantom_cohort(tmp_path / "a", cfg)
    ph.make_phantom_cohort(tmp_path / "b", cfg)
    ph.make_phantom_cohort(tmp_path / "c", tiny_config(task, seed=6, n_train=4, n_val=1, n_test=1))
    a, b, c = (_read_all(tmp_path / k) for k in "abc")
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    # same bytes, file by file (cohort.csv and phantom.json included)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    # another seed gives other images and masks
    assert not np.array_equal(a["img/train_000"], c["img/train_000"])
    assert not np.array_equal(a["truth/train_000"], c["truth/train_000"]) or task == "lesion_pa"


def test_case_content_does_not_depend_on_other_split_sizes(tmp_path):
    ph.make_phantom_cohort(tmp_path / "a", tiny_config("organ_ct", n_train=2, n_val=1, n_test=1))
    ph.make_phantom_cohort(tmp_path / "b", tiny_config("organ_ct", n_train=3, n_val=1, n_test=2))
    a, b = _read_all(tmp_path / "a"), _read_all(tmp_path / "b")
    for k in ("img/train_001", "img/val_000", "img/test_000"):
        assert np.array_equal(a[k], b[k])


# ----------------------------------------------------------------------------- corruption


def _organ_masks(n: int, size: int = 48, slices: int = 1) -> list[np.ndarray]:
    masks = []
    for i in range(n):
        _, truth = ph.organ_scene(np.random.default_rng([11, i]), (slices, size, size), (1.2, 1.2))
        masks.append(truth[0] if slices == 1 else truth)
    return masks


@pytest.mark.parametrize("target", [0.41, 0.62, 0.80])
def test_calibration_hits_target(target):
    masks = _organ_masks(8)
    strength = calibrate_corruption(masks, target, seed=3, spacing_xy=(1.2, 1.2))
    noisy = corrupt_masks(masks, strength, seed=3, spacing_xy=(1.2, 1.2))
    achieved = np.mean([dice(n, m) for n, m in zip(noisy, masks)])
    assert abs(achieved - target) <= 0.03, (target, achieved, strength)
    # the noise is not uniform: some cases are hit harder than others (label-quality triage needs it)
    assert np.std([dice(n, m) for n, m in zip(noisy, masks)]) > 0.01


def test_calibration_orders_strengths_and_rejects_unreachable_targets():
    masks = _organ_masks(5)
    s_low = calibrate_corruption(masks, 0.80, seed=1)
    s_high = calibrate_corruption(masks, 0.41, seed=1)
    assert 0.0 < s_low < s_high <= 1.0
    with pytest.raises(ConfigError):
        calibrate_corruption(masks, 0.02, seed=1)
    with pytest.raises(ConfigError):
        calibrate_corruption(masks, 1.5, seed=1)


def test_corrupt_mask_2d_and_3d():
    mask2d = _organ_masks(1)[0]
    rng = np.random.default_rng(0)
    assert np.array_equal(corrupt_mask(mask2d, 0.0, rng), mask2d)
    out = corrupt_mask(mask2d, 0.9, np.random.default_rng(0))
    assert out.shape == mask2d.shape and out.dtype == np.uint8
    assert 0.0 < dice(out, mask2d) < 0.95
    # 3D: one in-plane transform for the whole volume (no jitter below strength 0.5)
    vol = np.stack([mask2d] * 4)
    out3 = corrupt_mask(vol, 0.4, np.random.default_rng(1), spacing_xy=(1.2, 1.2))
    assert out3.shape == vol.shape
    assert all(np.array_equal(out3[0], out3[z]) for z in range(4))
    assert not np.array_equal(out3[0], mask2d)
    # same rng state → same result; Dice falls as strength rises
    d = [dice(corrupt_mask(vol, s, np.random.default_rng(2)), vol) for s in (0.1, 0.4, 0.8)]
    assert d[0] > d[1] > d[2]
    # an empty mask stays empty
    assert corrupt_mask(np.zeros((8, 8), np.uint8), 1.0, np.random.default_rng(0)).sum() == 0


# ----------------------------------------------------------------------------- ellipses


def _axes_mm(mask: np.ndarray, spacing_xy) -> tuple[float, float, float]:
    """Full minor and major axis (mm) and major-axis angle from second moments of a filled mask."""
    ys, xs = np.nonzero(mask)
    pts = np.stack([xs * spacing_xy[0], ys * spacing_xy[1]])
    cov = np.cov(pts)
    evals, evecs = np.linalg.eigh(cov)
    minor, major = 4.0 * np.sqrt(evals)  # uniform ellipse: variance = (semi-axis)² / 4
    angle = math.atan2(evecs[1, 1], evecs[0, 1])
    return float(minor), float(major), angle


def test_draw_ellipse_respects_mm_under_anisotropic_spacing():
    spacing = (0.3, 0.9)  # strongly anisotropic (x, y)
    shape = (80, 220)  # (Y, X): 71 mm × 66 mm
    for angle in (0.0, 0.7, 2.0):
        m = ph.draw_ellipse_mask(shape, spacing, 30.0, 1.5, angle, (33.0, 36.0))
        minor, major, measured = _axes_mm(m, spacing)
        assert minor == pytest.approx(30.0, rel=0.04)
        assert major == pytest.approx(45.0, rel=0.04)
        diff = abs((measured - angle + math.pi / 2) % math.pi - math.pi / 2)
        assert diff < 0.05
        ys, xs = np.nonzero(m)
        assert (xs * spacing[0]).mean() == pytest.approx(33.0, abs=0.3)
        assert (ys * spacing[1]).mean() == pytest.approx(36.0, abs=0.3)


def test_sampled_ellipses_respect_ranges_in_mm():
    size = 96
    spacing = ph.us_spacing(size)
    assert spacing[0] != spacing[1]
    ranges = ph.PHANTOM_HEAD
    assert ranges.minor_mm == pytest.approx((25 * ph.US_PHANTOM_SCALE, 105 * ph.US_PHANTOM_SCALE))
    assert ph.FETAL_HEAD.minor_mm == (25.0, 105.0) and ph.FETAL_HEAD.aspect == (1.2, 1.8)
    masks = ph.sample_ellipse_masks(40, (size, size), spacing, ranges, np.random.default_rng(4))
    assert masks.shape == (40, size, size) and masks.dtype == np.uint8
    minors, aspects, angles = [], [], []
    for m in masks:
        assert m[0].sum() == 0 and m[-1].sum() == 0 and m[:, 0].sum() == 0 and m[:, -1].sum() == 0  # fits
        minor, major, angle = _axes_mm(m, spacing)
        minors.append(minor)
        aspects.append(major / minor)
        angles.append(angle % math.pi)
    lo, hi = ranges.minor_mm
    assert min(minors) >= 0.94 * lo and max(minors) <= 1.04 * hi
    assert min(aspects) >= 1.2 - 0.08 and max(aspects) <= 1.8 + 0.08
    assert max(minors) - min(minors) > 0.5 * (hi - lo)  # the whole range is used
    assert np.ptp(angles) > 2.0  # any orientation


def test_ellipse_us_aux_masks_come_from_the_ellipse_model(cohorts):
    root, info = cohorts["ellipse_us"]
    cohort = load_cohort(root)
    assert info.n_aux == 6 and len(cohort.aux_masks) == 6
    spacing = ph.us_spacing(40)
    for p in cohort.aux_masks:
        m, geom = read_label(p)
        assert geom.spacing[:2] == pytest.approx(spacing, rel=1e-5)
        minor, major, _ = _axes_mm(m[0], spacing)
        assert 0.85 * ph.PHANTOM_HEAD.minor_mm[0] <= minor <= 1.1 * ph.PHANTOM_HEAD.minor_mm[1]
        assert 1.05 <= major / minor <= 1.95


# ----------------------------------------------------------------------------- other tasks


def test_organ_ct_aux_masks_are_shifted(tmp_path):
    info = ph.make_phantom_cohort(tmp_path, tiny_config("organ_ct", n_train=8, n_val=0, n_test=0, n_aux=12))
    cohort = load_cohort(tmp_path)
    assert info.n_aux == 12
    aux_area = np.mean([read_label(p)[0].sum() for p in cohort.aux_masks])
    truth_area = np.mean([read_label(c.truth)[0].sum() for c in cohort.cases])
    assert aux_area > 1.2 * truth_area


def test_lesion_pa_presence_and_masks(cohorts):
    root, _ = cohorts["lesion_pa"]
    cohort = load_cohort(root)
    tags = [c.presence for c in cohort.cases]
    assert set(tags) == {"present", "absent"}
    for c in cohort.cases:
        truth, _ = read_label(c.truth)
        img = read_image(c.image)
        assert c.image.suffix == ".png" and c.image.parent.name == c.presence
        assert img.array.max() <= 255 and img.array.min() >= 0
        if c.presence == "absent":
            assert truth.sum() == 0
        else:
            assert truth.sum() > 0
    labelled = [c for c in cohort.split("train") if c.label_kind == "clean"]
    assert len(labelled) == 1 and labelled[0].presence == "present"


def test_lesions_deform_their_surroundings():
    """The same tissue seen with and without lesions differs around the lesion, not only inside."""
    import scipy.ndimage as ndi

    n = 64
    # render_lesion_image draws the tissue first, so the same seed gives the same tissue
    absent, _ = ph.render_lesion_image(np.random.default_rng(9), n, False)
    present, mask = ph.render_lesion_image(np.random.default_rng(9), n, True)
    ring = ndi.binary_dilation(mask, iterations=6) & ~ndi.binary_dilation(mask, iterations=3)  # beyond the soft edge
    far = ~ndi.binary_dilation(mask, iterations=20)
    assert mask.any() and far.sum() > 500
    diff = np.abs(present.astype(float) - absent.astype(float))  # far away: only the pixel noise differs
    assert diff[ring].mean() > 1.5 * diff[far].mean()


def test_domain_shift_domains(cohorts):
    root, _ = cohorts["domain_shift"]
    cohort = load_cohort(root)
    assert {c.domain for c in cohort.cases} == {"source", "target"}
    for c in cohort.cases:
        if c.label_kind == "clean" and c.split == "train":
            assert c.domain == "source"
        if c.split == "train" and c.domain == "target":
            assert c.label_kind == "none"
        a = read_image(c.image).array
        if c.domain == "source":
            assert a.min() < -500  # CT air
        else:
            assert a.min() >= 0  # MR magnitude


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown phantom task"):
        ph.make_phantom_cohort(tmp_path / "x", ph.PhantomConfig("brain_mri"))
    with pytest.raises(ConfigError, match="setting"):
        ph.make_phantom_cohort(tmp_path / "x", ph.PhantomConfig("noisy_organ", setting="weak"))
    with pytest.raises(ConfigError, match="noise"):
        ph.PhantomConfig("noisy_organ", noise="extreme").resolved()
    with pytest.raises(ConfigError):
        ph.PhantomConfig("organ_ct", setting="noisy").resolved()
    with pytest.raises(ConfigError):
        ph.PhantomConfig("noisy_organ", n_train=3, n_clean=5).resolved()
    with pytest.raises(ConfigError):
        ph.PhantomConfig("ellipse_us", n_slices=4).resolved()
    assert ph.PhantomConfig("noisy_organ", noise="high").resolved().noise == pytest.approx(0.41)
    cfg = tiny_config("lesion_pa", n_train=2, n_val=0, n_test=0)
    ph.make_phantom_cohort(tmp_path / "y", cfg)
    with pytest.raises(ConfigError, match="overwrite"):
        ph.make_phantom_cohort(tmp_path / "y", cfg)
    ph.make_phantom_cohort(tmp_path / "y", cfg, overwrite=True)


def _us_case(omit=()):
    """One ellipse_us case rendered from the same seeded stream, with features left out."""
    shape, spacing = (48, 48), ph.us_spacing(48)
    rng = np.random.default_rng(7)
    head = ph.sample_ellipse_params(1, shape, spacing, ph.PHANTOM_HEAD, rng, margin_px=2.0)[0]
    truth = ph.draw_ellipse_mask(shape, spacing, head.minor_mm, head.aspect, head.angle_rad, head.center_xy) > 0
    return ph.render_ultrasound(rng, shape, spacing, head, omit), truth


def test_ellipse_us_features_can_be_left_out():
    full, truth = _us_case()
    # without the skull's gaps the ring is brighter where a gap was and nowhere darker
    no_gaps, t = _us_case(("skull_gaps",))
    assert np.array_equal(t, truth)
    assert np.all(no_gaps >= full) and (no_gaps > full + 0.05).any()
    # the fluid pocket is dark tissue outside the head: only pixels there change, upwards
    no_fluid, _ = _us_case(("fluid",))
    changed = no_fluid != full
    assert changed.any() and not (changed & truth).any()
    assert no_fluid[changed].mean() > full[changed].mean() + 0.1
    # clutter blobs are bright: leaving them out darkens the brightest pixels outside the head
    no_clutter, _ = _us_case(("clutter",))
    assert np.quantile(no_clutter[~truth], 0.99) < np.quantile(full[~truth], 0.99)


def test_us_omit_config(tmp_path):
    cfg = tiny_config("ellipse_us", us_omit=" skull_gaps,fluid ")
    assert cfg.resolved().us_omit == "fluid,skull_gaps"
    assert tiny_config("ellipse_us", us_omit="").resolved().us_omit is None
    with pytest.raises(ConfigError, match="unknown feature"):
        tiny_config("ellipse_us", us_omit="speckle").resolved()
    with pytest.raises(ConfigError, match="ellipse_us only"):
        tiny_config("organ_ct", us_omit="fluid").resolved()
    # the cohort keeps its heads (true masks) and records what was left out
    info_full = ph.make_phantom_cohort(tmp_path / "full", tiny_config("ellipse_us"))
    info = ph.make_phantom_cohort(tmp_path / "easy", cfg)
    assert info.config.us_omit == "fluid,skull_gaps" and info_full.config.us_omit is None
    for c_full, c in zip(load_cohort(tmp_path / "full").cases, load_cohort(tmp_path / "easy").cases):
        assert np.array_equal(read_label(c.truth)[0], read_label(c_full.truth)[0])
        assert not np.array_equal(read_image(c.image).array, read_image(c_full.image).array)
