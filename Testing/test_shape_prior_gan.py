"""shape_prior_gan: noise-weighted Dice, DGCC, the ellipse shape model, LQSS and a short
end-to-end run on an easy phantom (tiny images, few steps)."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from monai.losses import DiceLoss

from aeseg.cohort.reading import Geometry, read_label, write_image
from aeseg.data.phantoms import PHANTOM_HEAD
from aeseg.methods.shape_prior_gan import (ShapePriorGanConfig, ellipse_pool, ellipse_ranges, lqss_accept,
                                           lsgan_d_loss, noise_weighted_dice)
from aeseg.nets import cyclegan
from aeseg.nets.cyclegan import HistoryPool, PatchGAN, ResUNetGenerator, calibrate
from aeseg.nets.dgcc import DGCC, generate_with_feedback
from aeseg.nets.vae import LatentDiscriminator, MaskVAE



@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on a shared, busy machine it is several times faster."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------- loss


def test_noise_weighted_dice_matches_hand_computed_value():
    p = torch.tensor([0.9, 0.2, 0.6, 0.0]).view(1, 1, 2, 2)
    g = torch.tensor([1.0, 0.0, 1.0, 1.0]).view(1, 1, 2, 2)
    # w = 1 - |p - g| = (0.9, 0.8, 0.6, 0.0)
    # sum w p g = 0.9*0.9 + 0.6*0.6 = 1.17 ; sum w (p + g) = 0.9*1.9 + 0.8*0.2 + 0.6*1.6 + 0 = 2.83
    expected = 1.0 - (2 * 1.17 + 1e-5) / (2.83 + 1e-5)
    assert noise_weighted_dice(p, g).item() == pytest.approx(expected, abs=1e-6)
    # the unweighted form is the plain soft Dice: sum p g = 1.5, sum p + sum g = 1.7 + 3
    plain = 1.0 - (2 * 1.5 + 1e-5) / (4.7 + 1e-5)
    assert noise_weighted_dice(p, g, weighted=False).item() == pytest.approx(plain, abs=1e-6)


def test_unweighted_form_equals_monai_dice_and_weights_carry_no_gradient():
    torch.manual_seed(0)
    logits = torch.randn(3, 2, 8, 8, requires_grad=True)
    y = (torch.rand(3, 1, 8, 8) > 0.6).long()
    prob = torch.softmax(logits, 1)[:, 1:2]
    ref = DiceLoss(include_background=False, to_onehot_y=True, softmax=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)
    assert noise_weighted_dice(prob, y, weighted=False).item() == pytest.approx(ref(logits, y).item(), abs=1e-6)
    # gradient of the weighted loss = gradient with the weights frozen as constants
    p = torch.rand(1, 1, 4, 4, requires_grad=True)
    g = (torch.rand(1, 1, 4, 4) > 0.5).float()
    noise_weighted_dice(p, g).backward()
    w = (1 - (p - g).abs()).detach()
    p2 = p.detach().clone().requires_grad_(True)
    (1 - (2 * (w * p2 * g).sum() + 1e-5) / ((w * (p2 + g)).sum() + 1e-5)).backward()
    assert torch.allclose(p.grad, p2.grad)


# ----------------------------------------------------------------------------- DGCC


def _nets(size=32, f=4):
    torch.manual_seed(0)
    gen = ResUNetGenerator(1, 1, features=f, res_blocks=1)
    disc = PatchGAN(1, features=4)
    dgcc = DGCC(disc.feature_channels, gen.scale_channels)
    return gen, disc, dgcc, torch.randn(2, 1, size, size)


def test_dgcc_with_zero_beta_leaves_features_unchanged():
    gen, disc, dgcc, x = _nets()
    u = torch.randn(2, 8, 5, 5)
    assert torch.equal(calibrate(u, torch.zeros(2, 8, 1, 1)), u)
    with torch.no_grad():
        plain = gen(x)
        assert torch.equal(gen(x, [torch.zeros(2, c, 1, 1) for c in gen.scale_channels]), plain)
        # non-zero coefficients, gain (beta_scale) 0: turn 2 equals turn 1 exactly
        for br in dgcc.branches.values():
            torch.nn.init.normal_(br[2].weight)
        feats = lambda s: disc.features_and_scores(s)[0]  # noqa: E731
        to_mask = lambda z: 2 * torch.sigmoid(z) - 1  # noqa: E731
        outs = generate_with_feedback(gen, feats, dgcc, x, 2, to_mask, gain=0.0)
        assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], plain)
        outs = generate_with_feedback(gen, feats, dgcc, x, 3, to_mask, gain=1.0)
        assert len(outs) == 3 and not torch.allclose(outs[0], outs[1])  # calibration does act


def test_dgcc_keeps_shapes_at_every_scale(monkeypatch):
    gen, disc, dgcc, x = _nets(size=32, f=4)
    for br in dgcc.branches.values():
        torch.nn.init.normal_(br[2].weight)
    seen = []
    real = cyclegan.calibrate

    def spy(u, beta):
        out = real(u, beta)
        seen.append((tuple(u.shape), tuple(out.shape), None if beta is None else tuple(beta.shape), bool(beta is not None and not torch.equal(out, u))))
        return out

    monkeypatch.setattr(cyclegan, "calibrate", spy)
    with torch.no_grad():
        h, scores = disc.features_and_scores(2 * torch.sigmoid(gen(x)) - 1)
        assert h.shape[1] == disc.feature_channels and scores.shape[1] == 1
        seen.clear()
        betas = dgcc(h)
        y = gen(x, betas)
    assert y.shape == (2, 1, 32, 32)
    assert len(seen) == 4
    for s, (u_shape, out_shape, b_shape, changed) in enumerate(seen):
        c = gen.scale_channels[s]
        assert u_shape == out_shape == (2, c, 32 // 2 ** (3 - s), 32 // 2 ** (3 - s))
        assert b_shape == (2, c, 1, 1) and changed
    # DGCC(l) / DGCC(h) calibrate one scale only
    assert [b is not None for b in DGCC(disc.feature_channels, gen.scale_channels, scales="low")(h)] == [True, False, False, False]
    assert [b is not None for b in DGCC(disc.feature_channels, gen.scale_channels, scales="high")(h)] == [False, False, False, True]


def test_vae_and_latent_discriminator_shapes():
    vae = MaskVAE(32, latent=32, features=4)
    m = (torch.rand(3, 1, 32, 32) > 0.5).float()
    recon, mu, logvar = vae.sample(m, torch.Generator().manual_seed(0))
    assert recon.shape == m.shape and mu.shape == logvar.shape == (3, 32)
    assert float(recon.detach().min()) >= 0 and float(recon.detach().max()) <= 1
    assert LatentDiscriminator(32)(mu).shape == (3, 1)


# ----------------------------------------------------------------------------- ellipses


def _axes_mm(mask: np.ndarray, spacing_xy) -> tuple[float, float]:
    """Full minor and major axes (mm) of a filled ellipse from its second moments."""
    jj, ii = np.nonzero(mask)
    pts = np.stack([ii * spacing_xy[0], jj * spacing_xy[1]])
    lam = np.sort(np.linalg.eigvalsh(np.cov(pts)))
    return 4 * math.sqrt(lam[0]), 4 * math.sqrt(lam[1])


def test_ellipses_respect_millimetre_ranges_with_anisotropic_spacing():
    cfg = ShapePriorGanConfig(shape_prior="ellipse", minor_mm_low=9.0, minor_mm_high=13.0, aspect_low=1.3, aspect_high=1.7)
    ranges = ellipse_ranges(cfg)
    # 64 × 64 images with 0.3 × 0.6 mm pixels, resized to 48 px: 0.4 × 0.8 mm pixels
    grids = [((64, 64), (0.3, 0.6))]
    masks = ellipse_pool(40, grids, 48, ranges, np.random.default_rng(0))
    assert masks.shape == (40, 48, 48) and set(np.unique(masks)) <= {0, 1}
    minors, aspects, pixel_aspects = [], [], []
    for m in masks:
        mn, mj = _axes_mm(m, (0.4, 0.8))
        minors.append(mn)
        aspects.append(mj / mn)
        pn, pj = _axes_mm(m, (1.0, 1.0))
        pixel_aspects.append(pj / pn)
    assert min(minors) > 9.0 * 0.9 and max(minors) < 13.0 * 1.1
    assert min(aspects) > 1.3 * 0.9 and max(aspects) < 1.7 * 1.1
    # measured in pixels instead of millimetres, the shapes would be far out of range
    assert max(pixel_aspects) > 1.7 * 1.3 or min(pixel_aspects) < 1.3 / 1.3
    # presets
    assert ellipse_ranges(ShapePriorGanConfig(ellipse_preset="phantom")) == PHANTOM_HEAD
    assert ellipse_ranges(ShapePriorGanConfig(ellipse_preset="fetal_head")).minor_mm == (25.0, 105.0)


# ----------------------------------------------------------------------------- LQSS


def test_lqss_keeps_the_real_looking_side():
    scores = np.array([0.9, 0.1, 0.5, 0.7, 0.3, 0.8, 0.2, 0.6])
    keep = lqss_accept(scores, 75)
    assert keep.sum() == 6 and not keep[1] and not keep[6]  # the two lowest are rejected
    # the convention end to end: a PatchGAN trained with the method's LSGAN loss scores real
    # (ellipse) masks above fake (speckled) ones, and LQSS keeps the real ones
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    real = torch.from_numpy(ellipse_pool(32, [((32, 32), (1.0, 1.0))], 32, ellipse_ranges(
        ShapePriorGanConfig(minor_mm_low=8, minor_mm_high=14)), rng)).float()[:, None] * 2 - 1
    fake = (torch.rand(32, 1, 32, 32) > 0.7).float() * 2 - 1
    d = PatchGAN(1, features=8)
    opt = torch.optim.Adam(d.parameters(), 2e-3, betas=(0.5, 0.999))
    for _ in range(25):
        loss = lsgan_d_loss(d, real, fake)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        s = torch.cat([d(real[:8]), d(fake[:8])]).mean(dim=(1, 2, 3)).numpy()
    keep = lqss_accept(s, 50)
    assert keep[:8].all() and not keep[8:].any()


def test_minibatch_std_lets_the_mask_discriminator_see_the_batchs_variety():
    """``d_minibatch_std``: D_B's scores of a mask depend on the masks beside it (the batch's
    feature spread is one more input of its last layer), its features for DGCC do not; off,
    a mask's score is its own."""
    torch.manual_seed(0)
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    varied = torch.cat([x[:1], torch.rand(3, 1, 32, 32) * 2 - 1])
    same = x[:1].repeat(4, 1, 1, 1)
    d = PatchGAN(1, features=8, minibatch_std=True)
    f_var, s_var = d.features_and_scores(varied)
    f_same, s_same = d.features_and_scores(same)
    assert f_var.shape[1] == d.feature_channels and torch.allclose(f_var[0], f_same[0], atol=1e-6)
    assert not torch.allclose(s_var[0], s_same[0], atol=1e-4)
    assert torch.allclose(d(varied), s_var) and torch.isfinite(d(x[:1])).all()  # a batch of one: no spread
    plain = PatchGAN(1, features=8)
    assert torch.allclose(plain(varied)[0], plain(same)[0], atol=1e-6)


def test_zoom_crop_magnifies_by_the_factor_and_stays_inside_the_image():
    """``gan_crop`` (the paper's resize to 288 then random 256 crop): a horizontal ramp comes
    back with its slope divided by the factor (magnified), each sample's window at its own place but
    inside the magnified image; masks stay binary with ``nearest``; factor 1 is the identity."""
    from aeseg.methods.common import random_zoom_crop

    g = torch.Generator().manual_seed(3)
    x = torch.linspace(-1, 1, 32).view(1, 1, 1, 32).expand(6, 1, 32, 32).contiguous()
    assert random_zoom_crop(x, 1.0, g) is x
    y = random_zoom_crop(x, 2.0, g)
    assert y.shape == x.shape
    step = float(x[0, 0, 0, 1] - x[0, 0, 0, 0])
    slopes = (y[..., 1:] - y[..., :-1]).flatten(1).median(1).values  # the last half pixel may be clamped
    assert torch.allclose(slopes, torch.full_like(slopes, step / 2), atol=1e-5)
    first = y[:, 0, 0, 0]
    assert (first >= -1 - 1e-6).all() and (y[:, 0, 0, -1] <= 1 + 1e-6).all()
    assert len(torch.unique(first.round(decimals=3))) > 1  # windows differ between samples
    m = (torch.rand(6, 1, 32, 32, generator=g) > 0.5).float()
    assert set(torch.unique(random_zoom_crop(m, 1.125, g, mode="nearest")).tolist()) <= {0.0, 1.0}


def test_boundary_dropout_removes_boundary_sectors_and_nothing_else():
    """``boundary_dropout``: a bright ring on the boundary of a disc mask loses its
    brightness in some angular sectors (down to the background there), pixels more than
    ``band`` from the boundary are untouched, the image keeps its gradient, and ``p`` 0 is the
    identity without drawing random numbers."""
    from aeseg.methods.common import boundary_dropout

    h = w = 48
    ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    r = torch.hypot(ys - 22, xs - 26)
    mask = (r < 11).float().expand(5, 1, h, w)
    on_ring = (r - 11).abs() < 1.0
    img = torch.where(on_ring, 1.0, -0.5).expand(5, 1, h, w).clone().requires_grad_(True)
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    assert boundary_dropout(img, mask, g, 0.0, 2) is img
    assert torch.equal(g.get_state(), state)

    out = boundary_dropout(img, mask, g, 1.0, 2)
    far = (r - 11).abs() > 3.5
    assert torch.equal(out[..., far], img[..., far])
    ring = out[..., on_ring].detach()  # (5, 1, n)
    assert (ring.amin(-1) < -0.2).all()  # every sample lost its ring somewhere ...
    assert ((ring > 0.8).float().mean(-1) > 0.2).all()  # ... but not everywhere: sectors, not the whole ring
    out.sum().backward()
    assert img.grad.abs().sum() > 0


def test_history_pool_returns_new_or_stored_fakes_and_resumes_exactly():
    g = torch.Generator().manual_seed(0)
    off = HistoryPool(0)
    x = torch.randn(3, 1, 4, 4)
    assert torch.equal(off.query(x, g), x) and off.state() is None
    pool = HistoryPool(4)
    seen = [torch.full((2, 1, 4, 4), float(i)) for i in range(2)]  # batches 0, 1 fill the pool
    for b in seen:
        assert torch.equal(pool.query(b, g), b)  # not full yet: the new fakes pass through
    assert len(pool.items) == 4
    old = new = 0
    for i in range(2, 40):
        b = torch.full((2, 1, 4, 4), float(i))
        out = pool.query(b, g)
        for o in out:
            v = float(o[0, 0, 0])
            assert torch.all(o == v) and v <= i  # a whole sample, never a future one
            old, new = old + (v < i), new + (v == i)
        assert {float(t[0, 0, 0]) for t in pool.items} <= set(map(float, range(i + 1)))
        assert sum(float(t[0, 0, 0]) == i for t in pool.items) == sum(float(o[0, 0, 0]) < i for o in out)
    assert 20 < old < 56 and 20 < new < 56, (old, new)  # about half and half of 76
    # saved and reloaded (as a resumed job does) with the same generator state: same draws
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    copy = HistoryPool(4)
    copy.load(pool.state())
    b = torch.full((2, 1, 4, 4), 99.0)
    assert torch.equal(pool.query(b, g1), copy.query(b, g2))
    with pytest.raises(ValueError):
        HistoryPool(-1)


# ----------------------------------------------------------------------------- end to end


def _easy_cohort(root, n_train=24, size=32):
    """Bright ellipses on a dark, slightly noisy background; unpaired ellipse aux masks."""
    rng = np.random.default_rng(0)
    geom = Geometry((size, size, 1), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), ndim=2)
    ranges = ellipse_ranges(ShapePriorGanConfig(minor_mm_low=9, minor_mm_high=15, aspect_low=1.2, aspect_high=1.6))
    rows = []
    splits = [("train", n_train), ("val", 4), ("test", 4)]
    masks = ellipse_pool(sum(n for _, n in splits), [((size, size), (1.0, 1.0))], size, ranges, rng)
    k = 0
    for split, n in splits:
        for i in range(n):
            cid = f"{split}_{i:02d}"
            m = masks[k]
            k += 1
            img = (0.2 + 0.6 * m + rng.normal(0, 0.08, m.shape)).astype(np.float32)
            write_image(root / "images" / f"{cid}.nrrd", img[None], geom)
            write_image(root / "truth" / f"{cid}.nrrd", m[None], geom)
            lab = ""
            if split == "val":
                write_image(root / "labels" / f"{cid}.nrrd", m[None], geom)
                lab = f"labels/{cid}.nrrd"
            rows.append([cid, f"images/{cid}.nrrd", lab, "clean" if lab else "none", "", "", split, ""])
    for j, m in enumerate(ellipse_pool(48, [((size, size), (1.0, 1.0))], size, ranges, np.random.default_rng(1))):
        write_image(root / "aux_masks" / f"aux_{j:02d}.nrrd", m[None], geom)
    with open(root / "cohort.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", "image", "label", "label_kind", "presence", "domain", "split", "label_value"])
        w.writerows(rows)
    return root


_TINY = {
    "data.size": 32, "data.intensity": "minmax", "engine.batch_size": 8, "engine.probability_maps": False,
    "vae_epochs": 3, "gan_epochs": 8, "round_epochs": 3, "rounds": 2, "gan_features": 8, "gan_res_blocks": 1,
    "d_features": 8, "vae_features": 4, "features": 8, "depth": 3, "gan_lr": 1e-3,
}


@pytest.fixture(scope="module")
def easy_run(tmp_path_factory):
    """The easy phantom and one uninterrupted seeded run on it (shared by the tests below)."""
    from aeseg.engine.config import resolve_config
    from aeseg.engine.loop import create_job, run_job

    tmp = tmp_path_factory.mktemp("spg")
    root = _easy_cohort(tmp / "cohort")
    cfg = resolve_config("shape_prior_gan", _TINY, seed=0)
    job = create_job(tmp / "job", root, cfg)
    run_job(job.root, progress_bar=False)
    return tmp, root, cfg, job


def test_short_run_gives_pseudo_labels_better_than_chance(easy_run):
    from aeseg.cohort.manifest import load_cohort
    from aeseg.quality.metrics import dice
    from aeseg.quality.table import read_quality_csv

    _, root, _, job = easy_run
    co = load_cohort(root)
    train = [c for c in co.cases if c.split == "train"]
    truths = {c.case_id: read_label(c.truth)[0] for c in train}
    pseudo0 = {c.case_id: read_label(job.root / "pseudo_labels" / "round0" / f"{c.case_id}.seg.nrrd")[0] for c in train}
    # chance: the truth of another case (a random ellipse of the same prior)
    ids = sorted(truths)
    chance = np.mean([dice(truths[a], truths[b]) for a, b in zip(ids, ids[1:] + ids[:1])])
    got = np.mean([dice(pseudo0[c], truths[c]) for c in ids])
    assert got > chance + 0.2, (got, chance)
    final = np.mean([dice(read_label(job.root / "pseudo_labels" / f"{c}.seg.nrrd")[0], truths[c]) for c in ids])
    assert final > chance + 0.2, (final, chance)
    rows = read_quality_csv(job.root / "quality.csv")
    tr = [r for r in rows if r["split"] == "train"]
    assert len(tr) == len(ids)
    rejected = [r for r in tr if r["lqss_accepted"] == "false"]
    assert len(rejected) == len(ids) // 4  # 75 % kept
    assert all(r["flag"] for r in rejected) and rows[0]["lqss_accepted"] == "false"  # rejected cases come first
    assert all(r["round_change"] != "" for r in tr)
    assert (job.root / "pseudo_labels" / "round1" / f"{ids[0]}.seg.nrrd").exists()
    assert (job.root / "maps" / ids[0] / "discriminator.nrrd").exists()
    html = (job.root / "report" / "report.html").read_text(encoding="utf-8")
    assert '<img src="lqss.png"' in html and (job.root / "report" / "lqss.png").is_file()


def test_cancel_and_resume_reproduces_the_uninterrupted_run(easy_run, monkeypatch):
    """Cancelled once in the CycleGAN phase and once in round 1, then resumed: same final
    weights and pseudo labels as the run without interruption (all state is checkpointed)."""
    from aeseg.engine.loop import create_job, run_job
    from aeseg.methods.shape_prior_gan import ShapePriorGan

    tmp, root, cfg, ref = easy_run
    job = create_job(tmp / "job2", root, cfg)
    # steps: vae 3 × 6 (48 aux masks / 8), cyclegan 8 × 3 (24 slices / 8), round1 3 × 3 (18 kept cases)
    stops = {25, 44}
    original = ShapePriorGan.train_step

    def step(self, batch, info):
        out = original(self, batch, info)
        if info.global_step in stops:
            stops.discard(info.global_step)
            (job.root / "cancel").touch()
        return out

    monkeypatch.setattr(ShapePriorGan, "train_step", step)
    assert run_job(job.root, progress_bar=False).status == "cancelled"
    assert run_job(job.root, resume=True, progress_bar=False).status == "cancelled"
    assert run_job(job.root, resume=True, progress_bar=False).status == "done"
    assert not stops
    a = torch.load(ref.root / "model" / "model.pt", weights_only=True)["modules"]
    b = torch.load(job.root / "model" / "model.pt", weights_only=True)["modules"]
    for net in ("G_A", "D_B", "seg", "stage"):
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), (net, k)
    for r in ("round0", "round1"):
        for cid in ("train_00", "train_05"):
            pa = read_label(ref.root / "pseudo_labels" / r / f"{cid}.seg.nrrd")[0]
            pb = read_label(job.root / "pseudo_labels" / r / f"{cid}.seg.nrrd")[0]
            assert np.array_equal(pa, pb)


_RESTARTS = {**_TINY, "vae_epochs": 1, "gan_epochs": 1, "rounds": 1, "round_epochs": 1, "gan_starts": 2,
             "start_epochs": 1, "gan_ema": 0.5}  # weight averages on: they restart and resume with the trials


def test_restarts_continue_from_the_best_trial_and_resume_exactly(tmp_path, monkeypatch):
    """Two CycleGAN trials; the first scores better on validation, so the main phase must
    start from its weights, not from the second trial's. A run cancelled during the second
    trial and resumed ends with the same weights as the uninterrupted one."""
    from aeseg.engine.config import resolve_config
    from aeseg.engine.loop import create_job, run_job
    from aeseg.methods.shape_prior_gan import ShapePriorGan

    root = _easy_cohort(tmp_path / "cohort", n_train=8)
    cfg = resolve_config("shape_prior_gan", _RESTARTS, seed=0)
    scores = {"gan_try1": 0.9, "gan_try2": 0.1}
    seen: dict[str, dict] = {}
    orig_end_try, orig_begin = ShapePriorGan._end_try, ShapePriorGan.begin_phase

    def end_try(self, info):
        monkeypatch.setattr(self, "_trial_dice", lambda: scores[info.phase], raising=False)
        seen.setdefault(info.phase, {k: v.clone() for k, v in self._raw(self.G_A).state_dict().items()})
        seen.setdefault(info.phase + "_ema", {k: v.clone() for k, v in self.ema["G_A"].state_dict().items()})
        return orig_end_try(self, info)

    def begin(self, phase):
        orig_begin(self, phase)
        if phase.name == "cyclegan":
            seen.setdefault("cyclegan", {k: v.clone() for k, v in self._raw(self.G_A).state_dict().items()})
            seen.setdefault("cyclegan_ema", {k: v.clone() for k, v in self.ema["G_A"].state_dict().items()})

    monkeypatch.setattr(ShapePriorGan, "_end_try", end_try)
    monkeypatch.setattr(ShapePriorGan, "begin_phase", begin)
    ref = create_job(tmp_path / "ref", root, cfg)
    assert run_job(ref.root, progress_bar=False).status == "done"
    same = lambda a, b: all(torch.equal(a[k], b[k]) for k in a)  # noqa: E731
    assert same(seen["cyclegan"], seen["gan_try1"])
    assert not same(seen["cyclegan"], seen["gan_try2"])
    assert same(seen["cyclegan_ema"], seen["gan_try1_ema"])  # the kept trial's averages go on with it
    assert not same(seen["cyclegan_ema"], seen["gan_try2_ema"])
    epochs = [json.loads(line) for line in (ref.root / "events.jsonl").read_text().splitlines()]
    tries = [e for e in epochs if e.get("type") == "epoch" and e.get("phase", "").startswith("gan_try")]
    assert [e["metrics"]["try_best"] if "metrics" in e else e.get("try_best") for e in tries] == [1.0, 1.0]

    # cancel in the second trial (steps: vae 6, try1 1, try2 1 of 8 slices / 8), then resume
    _cancel_resume_matches(ref, create_job(tmp_path / "job", root, cfg), monkeypatch,
                           lambda m, info: info.phase == "gan_try2", ("G_A", "seg", "G_A_ema", "D_B_ema"))


def _cancel_resume_matches(ref, job, monkeypatch, when, names) -> None:
    """Run ``job`` until ``when(method, info)`` holds after a step, cancel, resume: its
    last checkpoint's networks ``names`` must equal those of the finished job ``ref``."""
    from aeseg.engine.loop import run_job
    from aeseg.methods.shape_prior_gan import ShapePriorGan

    original = ShapePriorGan.train_step

    def step(self, batch, info):
        out = original(self, batch, info)
        if when(self, info):
            (job.root / "cancel").touch()
        return out

    monkeypatch.setattr(ShapePriorGan, "train_step", step)
    assert run_job(job.root, progress_bar=False).status == "cancelled"
    monkeypatch.setattr(ShapePriorGan, "train_step", original)
    assert run_job(job.root, resume=True, progress_bar=False).status == "done"
    a = torch.load(ref.root / "checkpoints" / "last.pt", weights_only=True)["modules"]
    b = torch.load(job.root / "checkpoints" / "last.pt", weights_only=True)["modules"]
    for name in names:
        assert all(torch.equal(a[name][k], b[name][k]) for k in a[name]), name


def test_history_pool_survives_cancel_and_resume(tmp_path, monkeypatch):
    """With a history pool, a run cancelled in the CycleGAN phase and resumed ends with the
    same weights as the uninterrupted one (the pool is part of the checkpoint)."""
    from aeseg.engine.config import resolve_config
    from aeseg.engine.loop import create_job, run_job

    root = _easy_cohort(tmp_path / "cohort", n_train=8)
    cfg = resolve_config("shape_prior_gan", {**_TINY, "vae_epochs": 1, "gan_epochs": 4, "rounds": 1, "round_epochs": 1,
                                             "history_pool": 3, "engine.batch_size": 4}, seed=0)
    ref = create_job(tmp_path / "ref", root, cfg)
    assert run_job(ref.root, progress_bar=False).status == "done"
    full = []

    def when(m, info):
        if info.phase == "cyclegan" and info.epoch == 2 and info.step == 0:
            full.append(len(m.pool_b.items))  # full by now: the resumed run must restore it
            return True
        return False

    _cancel_resume_matches(ref, create_job(tmp_path / "job", root, cfg), monkeypatch, when, ("G_A", "D_B", "seg"))
    assert full == [3]


def test_weight_averages_make_the_pseudo_labels(tmp_path):
    """With ``gan_ema`` the averaged G_A, D_B and DGCC (updated once per CycleGAN step)
    are saved with the model and are what predicts, not the last trained weights."""
    from aeseg.engine.config import resolve_config
    from aeseg.engine.loop import create_job, run_job
    from aeseg.engine.predict import load_model

    root = _easy_cohort(tmp_path / "cohort", n_train=8)
    cfg = resolve_config("shape_prior_gan", {**_TINY, "vae_epochs": 1, "gan_epochs": 3, "rounds": 0, "gan_ema": 0.5,
                                             "gan_select_best": False, "engine.batch_size": 4,
                                             "engine.final": "last"}, seed=0)
    job = create_job(tmp_path / "job", root, cfg)
    assert run_job(job.root, progress_bar=False).status == "done"
    m, _, _ = load_model(job.root)
    assert set(m.ema) == {"G_A", "D_B", "dgcc"}
    assert int(m.ema["G_A"].n_averaged) == 3 * 2  # 3 epochs × (8 slices / 4)
    live = {k: {n: t.clone() for n, t in m._raw(net).state_dict().items()} for k, net in m._stage1_nets().items()}
    assert any(not torch.equal(live["G_A"][n], t) for n, t in m.ema["G_A"].module.state_dict().items())
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    got = m.predict_proba(x)
    with torch.no_grad():
        p_live = torch.sigmoid(m._generate(x).float())
        for k, net in m._stage1_nets().items():  # the averages into the trained networks' places
            m._raw(net).load_state_dict(m.ema[k].module.state_dict())
        p_avg = torch.sigmoid(m._generate(x).float())
    assert torch.allclose(got[:, 1:2], p_avg, atol=1e-6)
    assert not torch.allclose(got[:, 1:2], p_live, atol=1e-4)


def test_stage1_from_reuses_the_trained_stage1_weight_averages_included(tmp_path):
    """A job with ``stage1_from`` takes the other job's stage 1 as trained (with ``gan_ema``
    the averages, which are AveragedModels in the checkpoint): its round-0 pseudo labels and
    LQSS scores are the other job's, although its own seed differs."""
    from aeseg.engine.config import resolve_config
    from aeseg.engine.loop import create_job, run_job
    from aeseg.quality.table import read_quality_csv

    root = _easy_cohort(tmp_path / "cohort", n_train=8)
    base = {**_TINY, "vae_epochs": 1, "gan_epochs": 2, "rounds": 1, "round_epochs": 1, "gan_ema": 0.5,
            "engine.batch_size": 4}
    first = create_job(tmp_path / "first", root, resolve_config("shape_prior_gan", base, seed=0))
    assert run_job(first.root, progress_bar=False).status == "done"
    second = create_job(tmp_path / "second", root,
                        resolve_config("shape_prior_gan", {**base, "stage1_from": str(first.root)}, seed=1))
    assert run_job(second.root, progress_bar=False).status == "done"
    phases = [json.loads(line)["phase"] for line in (second.root / "events.jsonl").read_text().splitlines()
              if json.loads(line).get("type") == "epoch"]
    assert phases == ["round1"]  # no stage-1 phase ran in the second job
    files = sorted((first.root / "pseudo_labels" / "round0").glob("*.seg.nrrd"))
    assert len(files) == 8
    for f in files:
        assert np.array_equal(read_label(f)[0], read_label(second.root / "pseudo_labels" / "round0" / f.name)[0])
    scores = [{r["case"]: r["lqss_score"] for r in read_quality_csv(j.root / "quality.csv")} for j in (first, second)]
    assert scores[0] == pytest.approx(scores[1])


def test_round_stats_give_each_rounds_validation_dice_and_change_against_the_previous_round():
    """The report's rounds panel: round 0 = G_A (its best validation Dice), round k = the
    U-Net after k rounds, with the mean over cases of Dice(round k − 1 labels, round k labels)."""
    from types import SimpleNamespace

    from aeseg.methods.shape_prior_gan import ShapePriorGan, _pack

    class Slices(list):  # two cases of two 4×4 slices each
        records = [SimpleNamespace(start=0, count=2), SimpleNamespace(start=2, count=2)]

    train = Slices(range(4))
    r0 = torch.zeros(4, 4, 4, dtype=torch.uint8)
    r0[:, :2] = 1  # two rows of every slice: 8 pixels a slice, 16 a case
    r1 = r0.clone()
    r1[2:, :2, :2] = 0  # case 2 keeps half of its round-0 mask: Dice 2·8 / (16 + 8) = 2/3
    fake = SimpleNamespace(ctx=SimpleNamespace(data=SimpleNamespace(train=train)), size=4,
                           round_labels=[_pack(r0), _pack(r1), _pack(r1)], round_val=[0.7], gan_best=0.6,
                           _case_dice=ShapePriorGan._case_dice)
    stats = ShapePriorGan.round_stats(fake)
    assert [s.round for s in stats] == [0, 1, 2]
    assert stats[0].val_dice == 0.6 and stats[0].change_dice is None
    assert stats[1].val_dice == 0.7 and stats[1].change_dice == pytest.approx((1.0 + 2 / 3) / 2)
    assert stats[2].val_dice is None and stats[2].change_dice == pytest.approx(1.0)  # stopped early: no validation
    fake.gan_best = -1.0  # gan_select_best off: G_A's validation Dice was never measured
    assert ShapePriorGan.round_stats(fake)[0].val_dice is None
