"""presence_absence: the P/A codec, the multi-scale hinge discriminators and the method.

Tiny sizes throughout (32 px images, 4–8 channel networks, a couple of steps).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from aeseg.cohort.summary import CohortSummary
from aeseg.nets.discriminators import MultiScaleDiscriminator, d_hinge_loss, g_hinge_loss, max_depth
from aeseg.nets.pa_codec import CodecConfig, PACodec

SIZE = 32


def codec(**kw) -> PACodec:
    torch.manual_seed(0)
    cfg = dict(in_channels=1, features=4, depth=4, unique_fraction=0.25)
    cfg.update(kw)
    return PACodec(CodecConfig(**cfg))


def images(n=3, c=1, seed=1):
    return torch.randn(n, c, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)).clamp(-1, 1)


# --------------------------------------------------------------------------- codec


@pytest.mark.parametrize("skips", ["compressed", "full", "sum", "none"])
@pytest.mark.parametrize("seg_decoder", ["shared", "separate"])
def test_shapes_through_every_path(skips, seg_decoder):
    net = codec(skips=skips, seg_decoder=seg_decoder, in_channels=2)
    x = images(3, 2)
    code = net.encode(x)
    bott = 4 * 2**3
    assert code.unique.shape == (3, net.n_unique, 4, 4) and net.n_unique == bott // 4
    assert code.common.shape == (3, bott - net.n_unique, 4, 4)
    assert [s.shape[-1] for s in code.skips] == [32, 16, 8]
    u = net.sample_unique(code, torch.Generator().manual_seed(0))
    assert u.shape == code.unique.shape
    x_pa = net.absence(code)                    # P→A (or A→A autoencoding)
    x_pp = net.presence(code)                   # P→P reconstruction, Eq. (3)
    x_ap = net.presence(code, u)                # A→P with a prior sample, Eq. (5)
    x_apa = net.absence(net.encode(x_ap))       # the APA cycle
    for t in (x_pa, x_pp, x_ap, x_apa, net.residual(code)):
        assert t.shape == x.shape and torch.isfinite(t).all()
    assert x_pa.abs().max() <= 1.0  # tanh
    assert net.segment(code).shape == (3, 2, SIZE, SIZE)
    assert net(x).shape == (3, 2, SIZE, SIZE)


def test_odd_image_size_keeps_shapes():
    net = codec(depth=3)
    x = torch.randn(2, 1, 36, 44)
    code = net.encode(x)
    assert net.presence(code).shape == x.shape and net.segment(code).shape == (2, 2, 36, 44)


def _conv_weights(dec, out_layer: bool = True):
    return [p for n, p in dec.named_parameters()
            if "norm" not in n and "classifier" not in n and (out_layer or not n.startswith("out_conv"))]


def test_segmentation_shares_residual_convs_but_not_normalisation():
    net = codec()
    dec = net.residual_dec
    x = images()
    # translation output: gradients reach the convolutions and the mode-0 norms only
    net.zero_grad()
    net.residual(net.encode(x)).square().sum().backward()
    trans_grads = [p.grad is not None and p.grad.abs().sum() > 0 for p in _conv_weights(dec)]
    mode0 = [p.grad for sn in _switch_norms(dec) for p in sn.norms[0].parameters()]
    mode1 = [p.grad for sn in _switch_norms(dec) for p in sn.norms[1].parameters()]
    assert all(trans_grads)
    assert all(g is not None and g.abs().sum() > 0 for g in mode0)
    assert all(g is None for g in mode1)
    assert dec.classifier.weight.grad is None
    # segmentation output: the same convolutions, the mode-1 norms, the classifier
    net.zero_grad(set_to_none=True)
    net.segment(net.encode(x)).square().sum().backward()
    seg_grads = [p.grad is not None and p.grad.abs().sum() > 0 for p in _conv_weights(dec, out_layer=False)]
    assert all(seg_grads)
    assert all(p.grad is None for sn in _switch_norms(dec) for p in sn.norms[0].parameters())
    assert all(p.grad is not None for sn in _switch_norms(dec) for p in sn.norms[1].parameters())
    assert dec.classifier.weight.grad is not None
    # the segmentation norms are their own parameters: changing them moves only the segmentation
    net.eval()  # (no spectral-norm power iteration between the two evaluations)
    code = net.encode(x)
    with torch.no_grad():
        r0, s0 = net.residual(code), net.segment(code)
        for sn in _switch_norms(dec):
            sn.norms[1].weight.mul_(1.5).add_(0.3)
        r1, s1 = net.residual(code), net.segment(code)
    assert torch.equal(r0, r1)
    assert not torch.allclose(s0, s1)


def test_adaptive_segmentation_norms_come_from_each_images_code():
    """seg_norm=adain (the reference code): the segmentation norms' scales and shifts are
    predicted per image from its code; the translation never touches the style MLP."""
    net = codec(seg_norm="adain", image_size=SIZE)
    dec = net.residual_dec
    assert dec.code_grid == 4  # 32 px through 3 stride-2 convolutions: the bottleneck's own side
    x = images()
    net.zero_grad(set_to_none=True)
    net.residual(net.encode(x)).square().sum().backward()
    assert all(p.grad is None for p in dec.style.parameters())
    net.zero_grad(set_to_none=True)
    net.segment(net.encode(x)).square().sum().backward()
    assert all(p.grad is not None for p in dec.style.parameters())
    net.eval()
    with torch.no_grad():
        code = net.encode(x)
        styles = [s for s in dec.styles(code.full) if s is not None]
        assert len(styles) == len([m for m in _switch_norms(dec) if m.adain]) > 0
        assert not torch.allclose(styles[0][0], styles[0][1])  # one set per image
        # per image: the first image's segmentation does not depend on the rest of the batch
        assert torch.allclose(net.segment(code)[:1], net.segment(code.select(slice(0, 1))), atol=1e-5)
    # a zero style is a plain instance norm: zeroing the MLP's last layer changes the
    # segmentation, and every norm then gives zero-mean, unit-variance channels
    plain = codec(seg_norm="adain", image_size=SIZE, spectral=False).eval()
    with torch.no_grad():
        code = plain.encode(x)
        s0 = plain.segment(code)
        plain.residual_dec.style.output.weight.zero_()
        plain.residual_dec.style.output.bias.zero_()
        norm = plain.residual_dec.out_norm
        h = torch.randn(2, norm.channels, 8, 8) * 3 + 1
        y = norm(h, 1, plain.residual_dec.styles(code.full[:2])[-1])
        assert torch.allclose(y.mean((2, 3)), torch.zeros(2, norm.channels), atol=1e-4)
        assert torch.allclose(y.var((2, 3), unbiased=False), torch.ones(2, norm.channels), atol=1e-3)
        assert not torch.allclose(s0, plain.segment(code))
    with pytest.raises(ValueError, match="segmentation normalisation"):
        codec(seg_norm="batch")


def _switch_norms(dec):
    from aeseg.nets.pa_codec import SwitchNorm

    return [m for m in dec.modules() if isinstance(m, SwitchNorm)]


def test_separate_segmenter_leaves_residual_decoder_out_of_segmentation():
    net = codec(seg_decoder="separate")
    assert net.residual_dec.classifier is None and net.segmenter is not None
    net.segment(net.encode(images())).sum().backward()
    assert all(p.grad is None for p in net.residual_dec.parameters())
    assert any(p.grad is not None for p in net.segmenter.parameters())


def test_spectral_norm_everywhere_but_the_classifier():
    from torch.nn.utils import parametrize

    net = codec()
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    sn = [parametrize.is_parametrized(m, "weight") for m in convs]
    assert sum(not s for s in sn) == 1 and not parametrize.is_parametrized(net.residual_dec.classifier, "weight")
    assert not any(parametrize.is_parametrized(m, "weight") for m in codec(spectral=False).modules()
                   if isinstance(m, torch.nn.Conv2d))


def test_prior_unique_code_changes_the_a_to_p_image():
    net = codec()
    net.eval()
    code = net.encode(images())
    g = torch.Generator().manual_seed(5)
    u1, u2 = net.sample_unique(code, g), net.sample_unique(code, g)
    with torch.no_grad():
        a, p1, p2 = net.absence(code), net.presence(code, u1), net.presence(code, u2)
    assert (p1 - p2).abs().mean() > 1e-4
    assert (p1 - a).abs().mean() > 1e-4


def test_zero_residual_leaves_the_absence_image_unchanged():
    net = codec(spectral=False)
    net.eval()
    with torch.no_grad():
        net.residual_dec.out_conv.weight.zero_()
        net.residual_dec.out_conv.bias.zero_()
        code = net.encode(images())
        u = net.sample_unique(code, torch.Generator().manual_seed(0))
        assert net.residual(code, u).abs().max() == 0
        assert torch.equal(net.presence(code, u), net.absence(code))
        assert torch.equal(net.presence(code), net.absence(code))


# --------------------------------------------------------------------------- discriminators


def test_hinge_losses_match_hand_computed_values():
    real = [torch.tensor([[[[2.0, 0.5], [-1.0, 1.0]]]]), torch.tensor([[[[0.0]]]])]
    fake = [torch.tensor([[[[-2.0, 0.0], [0.5, -0.5]]]]), torch.tensor([[[[3.0]]]])]
    # scale 1: real relu(1 - d) = [0, .5, 2, 0] → 0.625; fake relu(1 + d) = [0, 1, 1.5, .5] → 0.75
    # scale 2: real 1.0; fake 4.0
    assert d_hinge_loss(real, fake).item() == pytest.approx(((0.625 + 0.75) + (1.0 + 4.0)) / 2)
    # generator: -(mean(fake)) per scale: -(-0.5) = 0.5 and -3 → mean -1.25
    assert g_hinge_loss(fake).item() == pytest.approx((0.5 - 3.0) / 2)
    # a confident discriminator (real ≥ 1, fake ≤ -1) has zero loss
    assert d_hinge_loss([torch.full((1, 1, 2, 2), 1.5)], [torch.full((1, 1, 2, 2), -1.2)]).item() == 0.0


def test_multiscale_discriminator_outputs_one_map_per_scale():
    d = MultiScaleDiscriminator(1, features=4, depth=max_depth(SIZE), scales=3)
    outs = d(images(2))
    assert len(outs) == 3
    assert [o.shape[:2] for o in outs] == [(2, 1)] * 3
    assert outs[0].shape[-1] > outs[1].shape[-1] > outs[2].shape[-1] >= 1
    assert max_depth(SIZE) >= 1 and max_depth(128) == 4


# --------------------------------------------------------------------------- method


def test_loss_weights_are_normalised():
    from aeseg.methods.presence_absence import PresenceAbsenceConfig, loss_weights

    w = loss_weights(PresenceAbsenceConfig())
    assert sum(w.values()) == pytest.approx(1.0)
    assert w["rec"] == pytest.approx(50 / 104.01) and w["seg"] == pytest.approx(0.01 / 104.01)
    w = loss_weights(PresenceAbsenceConfig(translation="none", lambda_rec=1, lambda_seg=1, lambda_lat=0))
    assert w == {"rec": 0.5, "seg": 0.5}
    assert set(loss_weights(PresenceAbsenceConfig(translation="p_to_a"))) == {"seg", "rec", "lat", "adv"}


def test_unsupported_reason_says_what_is_missing():
    from aeseg.methods.presence_absence import PresenceAbsence

    ok = CohortSummary(present=4, absent=4, present_with_mask=1)
    assert PresenceAbsence.unsupported_reason(ok) is None
    msg = PresenceAbsence.unsupported_reason(dataclasses.replace(ok, absent=0))
    assert "absent" in msg and "'present'" not in msg
    msg = PresenceAbsence.unsupported_reason(dataclasses.replace(ok, present=0, present_with_mask=0))
    assert "'present'" in msg
    msg = PresenceAbsence.unsupported_reason(dataclasses.replace(ok, present_with_mask=0))
    assert "mask" in msg


@pytest.fixture(scope="module")
def pa_cohort(tmp_path_factory):
    from aeseg.data.phantoms import PhantomConfig, make_phantom_cohort

    root = tmp_path_factory.mktemp("pa") / "lesion"
    make_phantom_cohort(root, PhantomConfig("lesion_pa", seed=2, n_train=8, n_val=2, n_test=2, size=SIZE,
                                            annotated_fraction=0.5))
    return root


SMALL = {"features": 4, "depth": 3, "disc_features": 4, "lr": 1e-3, "labeled_per_batch": 1}


def make_method(root, **kw):
    from aeseg.cohort.manifest import load_cohort
    from aeseg.data.dataset import load_cohort_data
    from aeseg.engine.config import resolve_config
    from aeseg.methods.base import MethodContext
    from aeseg.methods.registry import get_method

    cfg = resolve_config("presence_absence", {**SMALL, **kw, "data.size": SIZE}, seed=1)
    data = load_cohort_data(load_cohort(root), cfg.data)
    return get_method("presence_absence")(cfg.method_config, MethodContext(torch.device("cpu"), data, seed=1))


def test_batches_pair_present_with_absent_and_replay_after_resume(pa_cohort):
    from aeseg.methods.base import Phase

    m = make_method(pa_cohort)
    ph = Phase("train", 1)
    idx = m.train_indices(ph)
    assert (m.ctx.data.train.presence[idx] == 1).all() and len(idx) == 4
    state = m.extra_state()
    b1 = m.make_batch(idx[:3], ph)
    assert b1["n_present"] == 3 and b1["n_extra"] == 1
    pres = b1["presence"]
    assert pres[:3].tolist() == [1, 1, 1] and pres[3:6].tolist() == [0, 0, 0]
    assert b1["kind"][6] == 0 and pres[6] == 1  # the added annotated present slice
    m.load_extra_state(state)
    b2 = m.make_batch(idx[:3], ph)
    assert torch.equal(b1["index"], b2["index"])


@pytest.mark.parametrize("translation,cycle", [("both", True), ("p_to_a", False), ("none", False)])
def test_train_step_every_translation_mode(pa_cohort, translation, cycle):
    from aeseg.methods.base import Phase, StepInfo

    m = make_method(pa_cohort, translation=translation, cycle=cycle)
    assert ("disc_p" in m.modules()) == (translation == "both")
    assert ("disc_a" in m.modules()) == (translation != "none")
    ph = Phase("train", 1)
    idx = m.train_indices(ph)
    before = [p.detach().clone() for p in m.codec.parameters()]
    losses = m.train_step(m.make_batch(idx[:2], ph), StepInfo("train", 0, 1, 0, 1, 0))
    expected = {"rec", "lat", "seg"} | ({"adv"} if translation != "none" else set()) | ({"cyc"} if cycle else set())
    assert expected <= set(losses) and all(math.isfinite(v) for v in losses.values())
    assert ("cyc" in losses) == cycle and ("disc" in losses) == (translation != "none")
    assert any(not torch.equal(a, b) for a, b in zip(before, m.codec.parameters()))
    p = m.predict_proba(m.ctx.data.val.images[:2])
    assert p.shape == (2, 2, SIZE, SIZE) and torch.allclose(p.sum(1), torch.ones(2, SIZE, SIZE))


def test_segmentation_only_trains_the_segmentation_path_on_annotated_slices_alone(pa_cohort):
    """translation=none with lambda_rec = lambda_lat = 0: the paper's "segmentation only"
    baseline. The common decoder learns nothing; a batch without annotated slices changes
    no weight."""
    from aeseg.methods.base import Phase, StepInfo

    m = make_method(pa_cohort, translation="none", cycle=False, lambda_rec=0.0, lambda_lat=0.0, lambda_seg=1.0)
    assert m.weights == {"seg": 1.0} and "disc_a" not in m.modules()
    ph, info = Phase("train", 1), StepInfo("train", 0, 1, 0, 1, 0)
    idx = m.train_indices(ph)
    enc = [p.detach().clone() for p in m.codec.encoder.parameters()]
    com = [p.detach().clone() for p in m.codec.common.parameters()]
    losses = m.train_step(m.make_batch(idx[:2], ph), info)
    assert set(losses) == {"n_seg", "seg", "loss"} and losses["n_seg"] >= 1 and math.isfinite(losses["seg"])
    assert any(not torch.equal(a, b) for a, b in zip(enc, m.codec.encoder.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(com, m.codec.common.parameters()))
    # no annotated slice in the batch (no extras, unannotated present slices only): nothing to learn
    m.config.labeled_per_batch = 0
    unannotated = idx[m.ctx.data.train.kind[idx] != 0][:2]
    enc = [p.detach().clone() for p in m.codec.encoder.parameters()]
    assert m.train_step(m.make_batch(unannotated, ph), info) == {"n_seg": 0.0, "loss": 0.0}
    assert all(torch.equal(a, b) for a, b in zip(enc, m.codec.encoder.parameters()))


def test_job_writes_absence_and_residual_maps_and_quality(pa_cohort, tmp_path):
    from aeseg.cohort.reading import read_image
    from aeseg.engine.config import resolve_config
    from aeseg.engine.loop import create_job, run_job
    from aeseg.quality.table import read_quality_csv

    cfg = resolve_config("presence_absence", {**SMALL, "data.size": SIZE, "engine.epochs": 1, "engine.steps_per_epoch": 2,
                                              "engine.batch_size": 2, "engine.probability_maps": False}, seed=0)
    job = create_job(tmp_path / "job", pa_cohort, cfg)
    res = run_job(job.root, progress_bar=False)
    assert res.status == "done"
    rows = read_quality_csv(job.root / "quality.csv")
    assert len(rows) == 12
    for r in rows:
        assert 0.0 <= r["score"] <= 1.0 and float(r["residual_energy"]) >= 0.0
        assert r["flag"] == (r["score"] < 0.5)
    absence = read_image(job.map_path("train_000", "absence"))
    residual = read_image(job.map_path("train_000", "residual"))
    src = read_image(pa_cohort / "images" / "present" / "train_000.png")
    assert absence.array.shape == residual.array.shape == src.array.shape
    assert np.abs(absence.array).max() <= 1.0 + 1e-5
    # the report shows each case's absence image and residual beside it: three panels a row
    import matplotlib.image as mpimg
    assert mpimg.imread(str(job.root / "report" / "overview.png")).shape[1] == 900
    html = (job.root / "report" / "report.html").read_text(encoding="utf-8")
    assert '<img src="residual_vs_segmentation.png"' in html
    assert (job.root / "report" / "residual_vs_segmentation.png").is_file()


@pytest.mark.parametrize("small, learns", [(False, True), (True, False)])
def test_segmentation_head_learns_a_small_target_within_a_few_steps(small, learns):
    """Bright blobs covering ~4 % of the image, Dice + CE, Adam: with Kaiming classifier
    weights (paper, default) the head finds the foreground within 40 steps; with the
    near-zero classifier the logits stay flat that long (why it is not the default)."""
    from aeseg.methods.common import seg_loss

    g = torch.Generator().manual_seed(3)
    x = torch.rand(4, 1, SIZE, SIZE, generator=g) * 0.4 - 1.0
    y = torch.zeros(4, 1, SIZE, SIZE, dtype=torch.long)
    for i in range(4):
        r, c = 4 + 6 * i, 20 - 4 * i
        y[i, 0, r:r + 6, c:c + 6] = 1
    x = torch.where(y.bool(), x + 1.2, x)
    net = codec(features=8, small_classifier=small)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.5, 0.999), amsgrad=True)
    loss_fn = seg_loss()
    for _ in range(40):
        loss = loss_fn(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = net(x).argmax(1, keepdim=True)
    inter = (pred.bool() & y.bool()).sum().item()
    dice = 2 * inter / max(1, pred.sum().item() + y.sum().item())
    assert (dice > 0.5) == learns, dice


def test_validation_dice_is_over_present_cases_only(pa_cohort):
    """An empty prediction scores Dice 1 on an absent image: model selection must not
    reward a model that segments nothing."""
    from aeseg.engine.loop import validate

    data = make_method(pa_cohort).ctx.data
    assert {r.case.presence for r in data.val.records} == {"present", "absent"}

    class Empty:  # predicts background everywhere
        def train_mode(self, training):
            pass

        def predict_proba(self, x):
            return torch.cat([torch.ones_like(x[:, :1]), torch.zeros_like(x[:, :1])], 1)

    assert validate(Empty(), data, torch.device("cpu")) == 0.0
