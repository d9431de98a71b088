"""Tests of ``meta_reweight`` (MLB-Seg): the meta-gradient, the weight normalisation,
batch-norm statistics during the functional passes, the learned weights on a phantom
with known label errors, outputs, and the error for a cohort without a meta set."""

from __future__ import annotations

import copy
import csv

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from aeseg.cohort.manifest import load_cohort
from aeseg.cohort.summary import CohortSummary
from aeseg.data.dataset import load_cohort_data
from aeseg.data.phantoms import PhantomConfig, make_phantom_cohort
from aeseg.data.slicing import to_slices
from aeseg.engine.config import resolve_config
from aeseg.engine.loop import create_job, run_job
from aeseg.errors import MethodUnavailable
from aeseg.methods import augment
from aeseg.methods.base import MethodContext, Phase, StepInfo
from aeseg.methods.meta_reweight import (
    MetaReweight,
    clean_gradient,
    dual_forward,
    meta_grad_forward,
    meta_grad_lookahead,
    normalise_weights,
    view_average,
    view_params,
)
from aeseg.methods.registry import get_method
from aeseg.nets import NetConfig, make_unet


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny 32-px networks gain nothing from threads; on a busy machine they lose a lot."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _tiny_net(dtype=torch.float64):
    torch.manual_seed(0)
    net = make_unet(1, 2, NetConfig(features=4, depth=2, res_units=0)).to(dtype)
    net.train()
    return net


def _tiny_batch(dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 1, 8, 8, generator=g, dtype=dtype)
    y = (torch.rand(3, 8, 8, generator=g) > 0.6).long()
    y2 = (torch.rand(3, 8, 8, generator=g) > 0.4).long()
    xm = torch.randn(2, 1, 8, 8, generator=g, dtype=dtype)
    ym = (torch.rand(2, 8, 8, generator=g) > 0.5).long()
    return x, y, y2, xm, ym


def _meta_loss_at(net, x, targets, xm, ym, eps_maps, alpha):
    """L_meta(θ − α ∇θ Σ ε·cost(θ)) evaluated directly (no differentiation through it)."""
    params = dict(net.named_parameters())
    buffers = {n: b.clone() for n, b in net.named_buffers()}
    logits = functional_call(net, {**params, **buffers}, (x,))
    inner = sum((e * F.cross_entropy(logits, t, reduction="none")).sum() for e, t in zip(eps_maps, targets))
    grads = torch.autograd.grad(inner, list(params.values()))
    fast = {n: (p - alpha * g).detach() for (n, p), g in zip(params.items(), grads)}
    with torch.no_grad():
        out = functional_call(net, {**fast, **{n: b.clone() for n, b in net.named_buffers()}}, (xm,))
        return float(F.cross_entropy(out, ym))


def test_meta_gradient_matches_finite_differences():
    net = _tiny_net()
    x, y, y2, xm, ym = _tiny_batch()
    alpha = 0.5
    params = dict(net.named_parameters())
    logits = functional_call(net, {**params, **{n: b.clone() for n, b in net.named_buffers()}}, (x,))
    costs = [F.cross_entropy(logits, y, reduction="none"), F.cross_entropy(logits, y2, reduction="none")]
    g_eps, _, g_theta = meta_grad_lookahead(net, params, costs, xm, ym, alpha)
    h = 1e-5
    rng = np.random.default_rng(0)
    pixels = [(int(m), (int(rng.integers(3)), int(rng.integers(8)), int(rng.integers(8)))) for m in (0, 1, 0, 1, 0, 1)]
    for m, pix in pixels:
        def at(s):
            e = [torch.zeros(3, 8, 8, dtype=torch.float64) for _ in range(2)]
            e[m][pix] = s
            return _meta_loss_at(net, x, [y, y2], xm, ym, e, alpha)
        fd = (at(h) - at(-h)) / (2 * h)
        assert g_eps[m][pix].item() == pytest.approx(fd, rel=1e-5, abs=1e-10)
    # the forward-mode path computes the same derivative (and the same clean gradient)
    _, v = clean_gradient(net, params, xm, ym)
    for a, b in zip(v, g_theta):
        torch.testing.assert_close(a, b)
    lp, tangent = dual_forward(net, params, v, x)
    g_fwd = meta_grad_forward(lp, tangent, [y, y2], alpha)
    for a, b in zip(g_fwd, g_eps):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-12)
    assert max(float(g.abs().max()) for g in g_eps) > 0


def test_weights_are_nonnegative_and_sum_to_one():
    g = torch.Generator().manual_seed(0)
    raw_n, raw_p = torch.randn(4, 16, 16, generator=g), torch.randn(4, 16, 16, generator=g)
    wn, wp = normalise_weights(raw_n, raw_p, 1e-12)
    assert float(wn.min()) >= 0 and float(wp.min()) >= 0
    assert float(wn.sum()) == pytest.approx(1.0, abs=1e-5) and float(wp.sum()) == pytest.approx(1.0, abs=1e-5)
    assert torch.equal(wn == 0, raw_n <= 0)  # eq. 7 zeroes exactly the negative entries
    jn, jp = normalise_weights(raw_n, raw_p, 1e-12, joint=True)
    assert float(jn.sum() + jp.sum()) == pytest.approx(1.0, abs=1e-5) and float(jn.min()) >= 0
    zn, _ = normalise_weights(-raw_n.abs(), None, 1e-8)  # nothing positive: all-zero weights, no NaN
    assert torch.all(zn == 0)


def _buffers(net):
    return {n: b.clone() for n, b in net.named_buffers()}


@pytest.mark.parametrize("mode", ["lookahead", "forward"])
def test_batch_norm_running_stats_not_corrupted(mode):
    net = _tiny_net(torch.float32)
    ref = copy.deepcopy(net)
    x, y, y2, xm, ym = (t.float() if t.is_floating_point() else t for t in _tiny_batch())
    xm = xm * 5 + 3  # a clean batch with very different statistics: leaking them would show
    params = dict(net.named_parameters())
    if mode == "lookahead":
        logits = net(x)
        costs = [F.cross_entropy(logits, y, reduction="none")]
        meta_grad_lookahead(net, params, costs, xm, ym, 0.1)
    else:
        _, v = clean_gradient(net, params, xm, ym)
        dual_forward(net, params, v, x)
    ref(x)  # a plain training forward on the imperfect batch: the only update allowed
    got, want = _buffers(net), _buffers(ref)
    assert got.keys() == want.keys() and any("running_mean" in k for k in got)
    for k in want:
        torch.testing.assert_close(got[k], want[k], msg=f"buffer {k} differs")
    # control: a functional pass on the module's own buffers would have leaked the clean batch
    leak = copy.deepcopy(ref)
    functional_call(leak, dict(leak.named_parameters()), (xm,))
    assert any(not torch.equal(a, b) for a, b in zip(_buffers(leak).values(), want.values()))


def test_view_average_undoes_the_views():
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    img = torch.exp(-((xx - 0.2) ** 2 + (yy + 0.1) ** 2) / 0.2)[None, None].repeat(2, 1, 1, 1)
    vp = view_params(2, 4, g, 1.4, 0.6, torch.device("cpu"))
    views = augment.apply(img.repeat(5, 1, 1, 1), vp)
    back = view_average(views, vp, 5)
    assert float((back - img).abs().max()) < 0.05  # smooth map: only interpolation error remains


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    root = tmp_path_factory.mktemp("mr") / "cohort"
    make_phantom_cohort(root, PhantomConfig(task="noisy_organ", seed=0, size=32, n_train=10, n_val=1, n_test=1,
                                            n_slices=4, n_clean=2, noise="high"))
    return root


def _method(root, **overrides):
    co = load_cohort(root)
    cfg = resolve_config("meta_reweight", {"features": 8, "depth": 3, "size": 32, **overrides}, seed=0)
    data = load_cohort_data(co, cfg.data, with_truth=True)
    ctx = MethodContext(device=torch.device("cpu"), data=data, seed=0, cohort=co)
    return get_method("meta_reweight")(cfg.method_config, ctx), data


def test_wrong_label_pixels_get_lower_weight(phantom):
    """The learned label weight, averaged over the training steps, is lower where the given
    label disagrees with the truth (the phantom's labels are corrupted at mean Dice 0.41)."""
    m, data = _method(phantom, use_ple=False, use_mean_teacher=False)
    ph = Phase("train", 10)
    idx = m.train_indices(ph)
    err = torch.zeros(len(data.train), 32, 32, dtype=torch.bool)
    for rec in data.train.records:
        if rec.kind == "noisy":
            sl = slice(rec.start, rec.start + rec.count)
            err[sl] = torch.from_numpy(to_slices(rec.truth_zyx, 2) > 0) != (data.train.labels[sl, 0] > 0)
    g = torch.Generator().manual_seed(0)
    wrong, right = [], []
    for i in range(36):
        sel = idx[torch.randperm(len(idx), generator=g)[:8]]
        out = m.train_step(m.make_batch(sel, ph), StepInfo("train", i // 4, 10, i % 4, 4, i))
        assert out["w_sum_label"] == pytest.approx(1.0, abs=1e-4)
        assert out["w_sum_pseudo"] == pytest.approx(1.0, abs=1e-4)
        w = m.maps_label[sel].float()  # this step's weights, in each slice's own frame
        assert float(w.min()) >= 0
        if i >= 6:
            wrong.append(w[err[sel]])
            right.append(w[~err[sel]])
    wrong, right = torch.cat(wrong), torch.cat(right)
    assert len(wrong) > 1000 and len(right) > 1000
    assert float(wrong.mean()) < 0.8 * float(right.mean())


def test_resume_from_state_is_exact(phantom):
    """modules() + optimizers() + extra_state() are enough to continue bit-for-bit."""
    a, _ = _method(phantom, ple_views=2, meta_batch=2)
    ph = Phase("train", 4)
    idx = a.train_indices(ph)
    sels = [idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(i))[:6]] for i in range(4)]

    def step(m, i):
        return m.train_step(m.make_batch(sels[i], ph), StepInfo("train", i // 2, 4, i % 2, 2, i))

    for i in range(2):
        step(a, i)
    state = {"modules": {k: copy.deepcopy(v.state_dict()) for k, v in a.modules().items()},
             "optim": {k: copy.deepcopy(o.state_dict()) for k, o in a.optimizers().items()},
             "extra": copy.deepcopy(a.extra_state())}
    b, _ = _method(phantom, ple_views=2, meta_batch=2)
    for k, v in b.modules().items():
        v.load_state_dict(state["modules"][k])
    for k, o in b.optimizers().items():
        o.load_state_dict(state["optim"][k])
    b.load_extra_state(state["extra"])
    for i in range(2, 4):
        assert step(a, i) == step(b, i)
    for (n, pa), pb in zip(a.net.state_dict().items(), b.net.state_dict().values()):
        assert torch.equal(pa, pb), n
    assert torch.equal(a.maps_label, b.maps_label)


def test_full_method_trains_and_writes_quality(phantom, tmp_path):
    cfg = resolve_config("meta_reweight", {"features": 8, "depth": 3, "size": 32, "epochs": 2, "batch_size": 10,
                                           "probability_maps": False}, seed=0)
    job = create_job(tmp_path / "job", phantom, cfg)
    run_job(job.root, progress_bar=False)
    rows = list(csv.DictReader(open(job.quality_csv)))
    noisy = [r for r in rows if r["label_kind"] == "noisy"]
    assert noisy and all(r["meta_weight_label"] != "" for r in noisy if r["score"] != "")
    scored = [r for r in noisy if r["score"] != ""]
    assert len(scored) >= 4
    for r in scored:
        assert float(r["score"]) == pytest.approx(float(r["meta_label_kept"]), rel=1e-5)
        assert 0.0 <= float(r["score"]) <= 1.0
        assert float(r["meta_weight_label"]) >= 0 and float(r["meta_weight_pseudo"]) >= 0
    assert rows[0]["flag"] == "true" and rows[0]["label_kind"] == "noisy"  # review queue: low trust first
    assert all(r["score"] == "" for r in rows if r["label_kind"] == "clean")
    case = scored[0]["case"]
    for name in ("meta_weight_label", "meta_weight_pseudo"):
        p = job.map_path(case, name)
        assert p.is_file()
    from aeseg.cohort.reading import read_image

    mp = read_image(job.map_path(case, "meta_weight_label")).array
    lab = load_cohort(phantom).case(case)
    assert mp.shape[-3:] == read_image(lab.image).array.shape[-3:]
    assert float(np.nanmin(mp)) >= 0
    html = (job.root / "report" / "report.html").read_text(encoding="utf-8")
    assert '<img src="meta_weights.png"' in html and (job.root / "report" / "meta_weights.png").is_file()


def test_no_clean_case_is_a_clear_error(tmp_path):
    reason = MetaReweight.unsupported_reason(CohortSummary(clean_train=0, noisy_train=5, unlabeled_train=3))
    assert reason and "clean" in reason and "meta set" in reason
    assert MetaReweight.unsupported_reason(CohortSummary(clean_train=2, noisy_train=0, unlabeled_train=0))
    assert MetaReweight.unsupported_reason(CohortSummary(clean_train=2, noisy_train=3)) is None
    root = tmp_path / "noclean"
    make_phantom_cohort(root, PhantomConfig(task="noisy_organ", seed=1, size=32, n_train=3, n_val=0, n_test=0,
                                            n_slices=2, n_clean=0))
    cfg = resolve_config("meta_reweight", {"size": 32}, seed=0)
    with pytest.raises(MethodUnavailable, match="clean-labelled training case"):
        create_job(tmp_path / "job", root, cfg)
