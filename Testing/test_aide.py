"""AIDE (cross-model label self-correction) and its invertible view augmentations.

Tiny seeded phantoms (32 px, 3 slices per volume) and a small U-Net, one CPU thread
(tiny convolutions gain nothing from more, and a busy machine punishes spinning threads).
"""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch

from aeseg.methods.augment import apply, coverage, fixed_affine, invert, sample_affine
from aeseg.methods.base import MethodContext, StepInfo


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------- augment


def _blob(b: int, h: int, w: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    out = []
    for i in range(b):  # smooth, asymmetric blobs (so flips and rotations change them)
        cx, cy = 0.2 * math.cos(i), 0.15 * math.sin(i)
        out.append(torch.exp(-((xx - cx) ** 2 / 0.3 + (yy - cy) ** 2 / 0.15)) + 0.3 * xx)
    return torch.stack(out)[:, None].repeat(1, 2, 1, 1)


def test_flip_views_invert_exactly():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 2, 16, 20)
    p = sample_affine(8, 0.0, flip_p=0.5, vflip_p=0.5, generator=g)
    assert p.hflip.any() and (~p.hflip).any() and p.vflip.any()
    y = apply(x, p)
    assert torch.equal(y[p.hflip & ~p.vflip], x[p.hflip & ~p.vflip].flip(-1))
    assert not torch.equal(y, x)
    assert torch.equal(invert(y, p), x)  # bit-identical
    lab = (torch.rand(8, 1, 16, 20) > 0.5).long()
    la = apply(lab, p, mode="nearest")
    assert la.dtype == torch.long and torch.equal(invert(la, p, mode="nearest"), lab)


def test_rotation_zoom_views_invert_within_interpolation_error():
    g = torch.Generator().manual_seed(1)
    x = _blob(6, 64, 64)
    p = sample_affine(6, 60.0, zoom_range=(0.85, 1.15), flip_p=0.5, generator=g)
    y = apply(x, p)
    assert (y - x).abs().amax() > 0.3  # the views really moved
    back = invert(y, p)
    cov = coverage(p, (64, 64))
    inside = cov[:, :1].expand_as(x) > 0.999
    assert inside[:, :, 24:40, 24:40].all()  # the centre is always seen
    err = (back - x).abs()[inside]
    assert err.max() < 0.02 and err.mean() < 0.005
    # direction convention: +90° is torch.rot90(k=-1)
    a = torch.arange(36.0).view(1, 1, 6, 6)
    assert torch.allclose(apply(a, fixed_affine(1, angle_deg=90.0)), torch.rot90(a, -1, (-2, -1)), atol=1e-4)
    # zoom > 1 magnifies: the blob covers more pixels
    z = apply(x[:1], fixed_affine(1, zoom=1.5))
    assert (z[0, 0] > 0.5).sum() > (x[0, 0] > 0.5).sum()
    # fill value for pixels from outside the image
    f = apply(torch.zeros(1, 1, 16, 16), fixed_affine(1, angle_deg=45.0), fill=-1.0)
    assert f[0, 0, 0, 0] == pytest.approx(-1.0) and f[0, 0, 8, 8] == pytest.approx(0.0, abs=1e-6)


def test_shifted_views_move_by_whole_pixels_and_invert():
    """A view window's ``shift`` (the random crop of a magnified image): a shift of two
    pixels' worth moves the content by exactly two pixels; shifted, rotated and zoomed
    views invert within interpolation error where they saw the image; parameters without
    a shift concatenate with shifted ones."""
    from aeseg.methods.augment import AffineParams

    a = torch.arange(64.0).view(1, 1, 8, 8)
    px = 2 * 2 / 8  # two pixels in normalised coordinates (the image spans 2)
    p = AffineParams(torch.zeros(1), torch.ones(1), torch.zeros(1, dtype=torch.bool),
                     torch.zeros(1, dtype=torch.bool), torch.tensor([[px, 0.0]]))
    moved = apply(a, p, padding_mode="border")
    assert torch.allclose(moved[..., :6], a[..., 2:], atol=1e-4)  # output column j shows input j + 2
    x = _blob(6, 64, 64)
    g = torch.Generator().manual_seed(4)
    q = sample_affine(6, 30.0, zoom_range=(1.0, 1.3), flip_p=0.5, generator=g)
    q = AffineParams(q.angle, q.zoom, q.hflip, q.vflip, 0.2 * (2 * torch.rand(6, 2, generator=g) - 1))
    y = apply(x, q)
    unshifted = apply(x, AffineParams(q.angle, q.zoom, q.hflip, q.vflip))
    assert (y - unshifted).abs().amax() > 0.1  # the shift moved the views
    inside = coverage(q, (64, 64))[:, :1].expand_as(x) > 0.999
    assert inside.float().mean() > 0.4
    err = (invert(y, q) - x).abs()[inside]
    assert err.max() < 0.03 and err.mean() < 0.005
    both = AffineParams.cat([AffineParams(q.angle, q.zoom, q.hflip, q.vflip), q])
    assert torch.equal(both.shift[:6], torch.zeros(6, 2)) and torch.equal(both.shift[6:], q.shift)
    assert torch.allclose(apply(torch.cat([x, x]), both)[6:], y)


def test_training_rotations_move_image_and_labels_together():
    from aeseg.methods.common import random_rotations

    g = torch.Generator().manual_seed(3)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    lab = ((xx - 20) ** 2 / 40 + (yy - 12) ** 2 / 12 < 1).long()[None, None].repeat(4, 1, 1, 1)
    img = lab.float() * 2 - 1  # the image is its label, in [-1, 1]
    state = g.get_state()
    same_img, same = random_rotations(img, [lab, lab], 0.0, g)
    assert same_img is img and same[0] is lab and torch.equal(g.get_state(), state)  # 0°: nothing drawn
    ri, (r1, r2) = random_rotations(img, [lab, lab.clone()], 60.0, g)
    assert r1.dtype == torch.long and torch.equal(r1, r2)  # label sets rotate alike
    assert not torch.equal(r1, lab)  # they did rotate
    agree = ((ri > 0).long() == r1).float().mean(dim=(1, 2, 3))
    assert (agree > 0.98).all()  # image and label stay aligned (bilinear vs nearest at the edge)
    assert torch.allclose(ri[:, 0, 0, 0], torch.full((4,), -1.0)) and (r1[:, 0, 0, 0] == 0).all()  # outside: fill
    # the same seed gives the same rotations
    g2 = torch.Generator().manual_seed(3)
    random_rotations(img, [lab], 0.0, g2)
    ri2, (r12,) = random_rotations(img, [lab], 60.0, g2)
    assert torch.equal(ri2, ri) and torch.equal(r12, r1)


# ----------------------------------------------------------------------------- schedule


def test_correction_schedule_and_ramp_functions():
    from aeseg.methods.aide import consistency_ramp, correction_due

    fired = [e + 1 for e in range(100) if correction_due(e, warmup=20, every=10)]
    assert fired == list(range(1, 21)) + [30, 40, 50, 60, 70, 80, 90, 100]
    assert [e + 1 for e in range(40) if correction_due(e, 20, 10, start=5)] == list(range(5, 21)) + [30, 40]
    assert [consistency_ramp(e, 20) for e in (0, 5, 10, 20, 35)] == [0.0, 1 / 16, 0.25, 1.0, 1.0]
    assert consistency_ramp(0, 0) == 1.0


# ----------------------------------------------------------------------------- method


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """Seeded high-noise noisy_organ phantom: 2 clean + 6 noisy training volumes, with the
    true masks resampled to the training slices (evaluation only)."""
    from aeseg.cohort.manifest import load_cohort
    from aeseg.data.dataset import load_cohort_data
    from aeseg.data.phantoms import PhantomConfig, make_phantom_cohort
    from aeseg.data.slicing import to_slices
    from aeseg.data.transforms import DataConfig, resize_slices

    root = tmp_path_factory.mktemp("aide") / "noisy_high"
    make_phantom_cohort(root, PhantomConfig(task="noisy_organ", seed=1, n_train=8, n_val=0, n_test=1, size=32,
                                            n_slices=3, noise="high", n_clean=2))
    data = load_cohort_data(load_cohort(root), DataConfig(size=32), with_truth=True)
    truth = torch.zeros_like(data.train.labels)
    for r in data.train.records:
        t = resize_slices(to_slices(r.truth_zyx[None].astype(np.float32), 2), 32, "nearest")[:, 0]
        truth[r.start:r.start + r.count, 0] = torch.from_numpy(t > 0.5).long()
    return root, data, truth


def _method(data, seed=0, **kw):
    from aeseg.methods.aide import Aide, AideConfig

    torch.manual_seed(seed)
    cfg = AideConfig(**{"features": 8, "depth": 3, "lr": 3e-3, "warmup": 4, **kw})
    return Aide(cfg, MethodContext(device=torch.device("cpu"), data=data, seed=seed))


def _epoch(m, epoch, epochs=10, bs=8):
    tr = m.ctx.data.train
    idx = tr.indices(("clean", "noisy"))
    g = torch.Generator().manual_seed(100 + epoch)
    order = idx[torch.randperm(len(idx), generator=g)]
    steps = math.ceil(len(order) / bs)
    out = []
    for s in range(steps):
        out.append(m.train_step(tr.batch(order[s * bs:(s + 1) * bs]), StepInfo("train", epoch, epochs, s, steps, 0)))
    return out


def _case_dice(a, b):
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a.bool() & b.bool()).sum()) / s


def test_short_run_moves_corrected_labels_towards_truth_and_keeps_clean_labels(phantom):
    _, data, truth = phantom
    tr = data.train
    given = tr.labels.clone()
    m = _method(data, correct_fraction=0.34)
    for e in range(10):
        _epoch(m, e)
    recs = m.correct_labels(9)
    assert recs and {r["network"] for r in recs} == {1, 2}
    assert all(r["label_set"] == 3 - r["network"] for r in recs)  # cross-model: each corrects its peer's set
    before, after = [], []
    for r in recs:
        rec = next(x for x in tr.records if x.case_id == r["case"])
        assert rec.kind == "noisy"
        sl = slice(rec.start, rec.start + rec.count)
        before.append(_case_dice(given[sl], truth[sl]))
        after.append(_case_dice(m.label_sets[r["label_set"] - 1][sl], truth[sl]))
    assert np.mean(after) > np.mean(before) + 0.1, (before, after)
    # expert labels are never overwritten; the data's own labels are never touched
    clean = tr.kind == 0
    assert clean.any()
    for ls in m.label_sets:
        assert torch.equal(ls[clean].long(), given[clean])
    assert torch.equal(tr.labels, given)


def test_area_calibrated_corrections_take_the_given_labels_total_area(phantom):
    """``correct_area``: the correcting predictions, over all noisy cases, mark as many
    pixels as the given noisy labels do; argmax (off) marks what the network says."""
    from aeseg.methods.aide import area_threshold

    p = torch.tensor([0.9, 0.2, 0.7, 0.55, 0.1])
    assert area_threshold(p, 2) == pytest.approx(0.7) and int((p >= area_threshold(p, 2)).sum()) == 2
    assert int((p >= area_threshold(p, 0)).sum()) == 0 and int((p >= area_threshold(p, 9)).sum()) == 5
    _, data, _ = phantom
    tr = data.train
    m_on = _method(data, correct_area=True, largest_component=False)
    m_off = _method(data, correct_area=False, largest_component=False)
    for e in range(3):
        _epoch(m_on, e)
    m_off.nets[0].load_state_dict(m_on.nets[0].state_dict())  # the same network, weights and BatchNorm statistics
    cases = m_on.noisy_cases
    given = sum(int(tr.labels[tr.records[r].start:tr.records[r].start + tr.records[r].count].sum()) for r in cases)
    on = m_on._predict_labels(m_on.nets[0], cases)
    off = m_off._predict_labels(m_off.nets[0], cases)
    marked_on = sum(int(v.sum()) for v in on.values())
    marked_off = sum(int(v.sum()) for v in off.values())
    assert abs(marked_on - given) <= 2, (marked_on, given)  # ties at the threshold only
    assert marked_off != given and all(set(v.unique().tolist()) <= {0, 1} for v in on.values())


def test_consistency_weight_follows_the_ramp(phantom):
    _, data, _ = phantom
    m = _method(data, warmup=4)
    for e, r in ((0, 0.0), (1, 1 / 16), (2, 0.25), (6, 1.0)):
        out = _epoch(m, e)[0]
        assert out["r"] == pytest.approx(r)
        assert ("cons1" in out and "cons2" in out) == (r > 0)
    # λ_c·r·consistency: with λ_c = 0 the consistency never enters
    m0 = _method(data, consistency=0.0)
    assert "cons1" not in _epoch(m0, 3)[0]
    # one network: it pseudo-labels for itself
    m1 = _method(data, two_networks=False)
    out = _epoch(m1, 3)[0]
    assert "cons1" in out and "loss2" not in out and len(m1.label_sets) == 1


def test_local_pseudo_labels_are_sharpened_probabilities_with_confidence(phantom):
    from aeseg.methods.aide import confidence_weight, sharpen

    _, data, _ = phantom
    m = _method(data, temperature=0.5)
    x = data.train.images[:4]
    prob, w = m.local_pseudo_labels(m.nets[0], x)
    assert prob.shape == (4, 2, 32, 32) and w.shape == (4, 1, 32, 32)
    assert torch.allclose(prob.sum(1), torch.ones(4, 32, 32), atol=1e-5)
    assert (w >= 0).all() and (w <= 1).all()
    p = torch.tensor([[0.6, 0.4]]).view(1, 2, 1, 1)
    s = sharpen(p, 0.5)
    assert s[0, 0, 0, 0] == pytest.approx(0.36 / 0.52) and confidence_weight(torch.full((1, 2, 1, 1), 0.5)).item() == 0.0


def test_train_view_counts_the_training_prediction_as_one_view(phantom):
    _, data, _ = phantom
    x = data.train.images[:3]
    m = _method(data, views=1, train_view=True)
    own = torch.softmax(torch.randn(3, 2, 32, 32), 1)
    calls = []
    h = m.nets[0].register_forward_hook(lambda *a: calls.append(1))
    prob, w = m.local_pseudo_labels(m.nets[0], x, own)
    assert not calls  # K = 1: the training pass's prediction is the only view, no forward pass
    assert torch.allclose(prob, own) and torch.allclose(w, 1 - 4 * own[:, :1] * own[:, 1:])
    m.config.views = 3
    prob3, _ = m.local_pseudo_labels(m.nets[0], x, own)
    h.remove()
    assert len(calls) == 1  # the other K − 1 views in one batched pass
    assert not torch.allclose(prob3, own) and torch.allclose(prob3.sum(1), torch.ones(3, 32, 32), atol=1e-5)
    # in a training step it is used when switched on (and changes the pseudo labels)
    a, b = _method(data, seed=0, train_view=True), _method(data, seed=0)
    la, lb = _epoch(a, 3)[0], _epoch(b, 3)[0]
    assert "cons1" in la and la["cons1"] != lb["cons1"]


def test_view_mode_sets_the_batchnorm_mode_of_the_views(phantom):
    _, data, _ = phantom
    x = data.train.images[:4]
    modes = []
    for mode in ("eval", "train"):
        m = _method(data, views=2, view_mode=mode)
        net = m.nets[0]
        bn = [b for b in net.modules() if isinstance(b, torch.nn.modules.batchnorm._BatchNorm)]
        assert bn
        before = [b.running_mean.clone() for b in bn]
        seen = []
        h = bn[0].register_forward_pre_hook(lambda mod, _: seen.append(mod.training))
        prob, _ = m.local_pseudo_labels(net, x)
        h.remove()
        assert net.training  # the network's own mode is given back
        changed = any(not torch.equal(b0, b.running_mean) for b0, b in zip(before, bn))
        modes.append((seen, changed))
        assert torch.allclose(prob.sum(1), torch.ones(4, *x.shape[-2:]), atol=1e-5)
    # eval: running statistics, left as they were; train (the code's way): the views' own
    # batch statistics, which also move the running averages as a training pass does
    assert modes[0] == ([False], False) and modes[1] == ([True], True)


def _bn_layers(nets):
    return [b for n in nets for b in n.modules() if isinstance(b, torch.nn.modules.batchnorm._BatchNorm)]


def test_precise_bn_recomputes_the_statistics_whatever_they_were(phantom):
    """supervised and aide: after an epoch, BatchNorm statistics are those of the current
    weights on the training slices, not the running averages (garbage here) they held."""
    from aeseg.methods.supervised import Supervised, SupervisedConfig

    _, data, _ = phantom
    info = StepInfo("train", 0, 1, 0, 1, 0)

    def sup(precise):
        torch.manual_seed(0)
        return Supervised(SupervisedConfig(features=8, depth=3, labels="all", precise_bn=precise),
                          MethodContext(device=torch.device("cpu"), data=data, seed=0))

    def spoil(layers):
        g = torch.Generator().manual_seed(1)
        for b in layers:
            b.running_mean.copy_(torch.rand(b.running_mean.shape, generator=g) * 10 - 5)
            b.running_var.copy_(torch.rand(b.running_var.shape, generator=g) * 9 + 0.1)
        return [(b.running_mean.clone(), b.running_var.clone()) for b in layers]

    for make in (lambda p: sup(p), lambda p: _method(data, precise_bn=p, global_correction=False)):
        a, b, off = make(True), make(True), make(False)  # the same weights
        nets = lambda m: m.nets if hasattr(m, "nets") else [m.net]  # noqa: E731
        spoil(_bn_layers(nets(b)))
        kept = spoil(_bn_layers(nets(off)))
        for m in (a, b, off):
            m.end_epoch(info)
        for x, y in zip(_bn_layers(nets(a)), _bn_layers(nets(b))):
            assert torch.allclose(x.running_mean, y.running_mean, atol=1e-5)
            assert torch.allclose(x.running_var, y.running_var, rtol=1e-4, atol=1e-6)
        assert not torch.allclose(_bn_layers(nets(a))[0].running_var, torch.ones_like(_bn_layers(nets(a))[0].running_var))
        for (mean, var), x in zip(kept, _bn_layers(nets(off))):  # off: left as they were
            assert torch.equal(mean, x.running_mean) and torch.equal(var, x.running_var)
        assert all(n.training for n in nets(a))


@pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)`")
def test_correction_events_follow_the_schedule(phantom):
    _, data, _ = phantom
    m = _method(data, warmup=2, correct_every=3)
    fired = []
    for e in range(7):
        rep = m.end_epoch(StepInfo("train", e, 7, 0, 1, 0))
        if rep.events:
            assert all(ev["type"] == "correction" for ev in rep.events)
            fired.append(e + 1)
    assert fired == [1, 2, 3, 6]
    assert len(m.history) == 4 * 2 * 1  # 4 times × 2 networks × max(1, 25 % of 6 noisy cases)
    m2 = _method(data, global_correction=False)
    assert not m2.end_epoch(StepInfo("train", 0, 7, 0, 1, 0)).events
    # a correction warm-up of its own: every 2nd epoch from epoch 3, whatever the ramp's warm-up
    m3 = _method(data, warmup=20, correct_warmup=0, correct_every=2, correct_start=3)
    assert [e + 1 for e in range(7) if m3.end_epoch(StepInfo("train", e, 7, 0, 1, 0)).events] == [4, 6]


def test_resume_gives_the_same_label_sets_and_weights(phantom):
    _, data, _ = phantom
    a = _method(data, seed=0, warmup=2)
    _epoch(a, 0)
    a.end_epoch(StepInfo("train", 0, 3, 0, 1, 0))
    buf = io.BytesIO()
    torch.save({"modules": {k: v.state_dict() for k, v in a.modules().items()},
                "optim": {k: v.state_dict() for k, v in a.optimizers().items()}, "extra": a.extra_state()}, buf)
    buf.seek(0)
    ck = torch.load(buf, weights_only=True)
    b = _method(data, seed=123, warmup=2)  # different initialisation, then restored
    for k, mod in b.modules().items():
        mod.load_state_dict(ck["modules"][k])
    for k, o in b.optimizers().items():
        o.load_state_dict(ck["optim"][k])
    b.load_extra_state(ck["extra"])
    for m in (a, b):
        _epoch(m, 1)
        m.end_epoch(StepInfo("train", 1, 3, 0, 1, 0))
    assert len(a.history) == len(b.history) > 0 and a.history == b.history
    for la, lb in zip(a.label_sets, b.label_sets):
        assert torch.equal(la, lb)
    for pa, pb in zip(a.nets[0].parameters(), b.nets[0].parameters()):
        assert torch.equal(pa, pb)


def test_unsupported_reasons():
    from aeseg.cohort.summary import CohortSummary
    from aeseg.methods.aide import Aide, AideConfig

    assert Aide.unsupported_reason(CohortSummary(clean_train=1, noisy_train=3)) is None
    assert "standardize" in Aide.unsupported_reason(CohortSummary(clean_train=1, unlabeled_train=3), AideConfig(standardize=False))
    assert Aide.unsupported_reason(CohortSummary(clean_train=2)) is not None


# ----------------------------------------------------------------------------- engine


def test_job_writes_corrections_quality_and_maps(tiny_cohort, tmp_path):
    """Mixed cohort (clean + noisy + unlabelled): task standardization first, then AIDE."""
    import slicerio

    from aeseg.engine.config import resolve_config
    from aeseg.engine.loop import create_job, run_job
    from aeseg.quality.table import read_quality_csv

    cfg = resolve_config("aide", {"engine.epochs": 2, "engine.batch_size": 8, "data.size": 32, "features": 8,
                                  "depth": 3, "warmup": 1, "views": 2, "engine.probability_maps": False}, seed=0)
    job = create_job(tmp_path / "job", tiny_cohort, cfg)
    res = run_job(job.root, progress_bar=False)
    assert res.status == "done"
    assert (job.root / "standardize" / "events.jsonl").is_file()
    events = [json.loads(line) for line in (job.root / "events.jsonl").read_text().splitlines()]
    corr = [e for e in events if e["type"] == "correction"]
    assert corr and all({"case", "epoch", "network", "dice_new_vs_replaced", "dice_new_vs_given"} <= set(e) for e in corr)
    hist = (job.root / "corrections.csv").read_text().splitlines()
    assert len(hist) == len(corr) + 1
    rows = {r["case"]: r for r in read_quality_csv(job.root / "quality.csv")}
    data_cases = json.loads((tiny_cohort / "phantom.json").read_text())
    noisy = [c for c, r in rows.items() if r.get("label_kind") == "noisy"]
    assert len(noisy) >= 4  # noisy + standardized unlabelled training cases
    for c in noisy:
        r = rows[c]
        expect = 0.5 * (1.0 - float(r["aide_dice_change"]) + float(r["aide_agreement"]))
        assert r["score"] == pytest.approx(expect, abs=1e-3)
        seg = slicerio.read_segmentation(str(job.correction(c)))
        names = [s["name"] for s in seg["segments"]]
        assert names == ["Corrected", "Given label"]
        assert (job.root / "maps" / c / "aide_confidence.nrrd").is_file()
    corrected = {e["case"] for e in corr}
    assert corrected <= set(noisy)
    assert sum(int(rows[c]["aide_corrections"]) for c in noisy) == len(corr)
    assert data_cases  # phantom metadata present
    # the report shows the correction history, one row per noisy case in review order
    from aeseg.report import CaseCorrections
    from aeseg.report.corrections import correction_points

    html = (job.root / "report" / "report.html").read_text(encoding="utf-8")
    assert '<img src="corrections.png"' in html and (job.root / "report" / "corrections.png").is_file()
    order = [c for c in sorted(rows, key=lambda c: int(rows[c]["rank"])) if c in noisy]
    pts = correction_points(corr, [CaseCorrections(c) for c in order])
    assert sum(len(p) for p in pts.values()) == len(corr)
    artifacts = [e["path"] for e in events if e["type"] == "artifact"]
    assert "report/report.html" in artifacts
