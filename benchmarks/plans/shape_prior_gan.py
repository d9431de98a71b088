"""Benchmark plan for ``shape_prior_gan`` (seed 000) on ``ellipse_us`` and ``organ_ct``.

Neither task has a training label, so the harness's noisy and clean-only baselines do
not apply; the reference is the oracle (the same U-Net trained on the true labels).
Reported (in ``extra``):

- ``stage1``: Dice (vs the truth) of the generator G_A's pseudo labels on the training
  images and on the test images for each stage-1 variant: baseline CycleGAN, + VAE-D,
  + DGCC, + VAE-D + DGCC (the main run's round-0 labels). The variants are ablation
  runs with ``rounds=0`` (G_A is the final model).
- ``stage2``: test Dice of the paper's Table IV/VI rows, each reusing the main run's
  stage 1 of the same training seed (``stage1_from``): U-Net (baseline: all pseudo labels, Dice, once), U-Net
  (LQSS), U-Net (LQSS + IT), U-Net (LQSS + IT + wDice) = the main run; plus the oracle.
- ``rounds``: per round, the validation Dice and the Dice of the training pseudo labels.
- ``triage``: mean true Dice of G_A's pseudo labels of LQSS-accepted vs rejected
  training cases, and the Spearman correlation of the LQSS score with that Dice.
- restarts (quick profile): 3 CycleGAN trials of 3 epochs, the best on validation Dice
  continues for 24 more (27 in all); without them one training seed of three
  gave stage-1 pseudo labels of Dice 0.19 (masks in the wrong place) and a final 0.29;
- ``round_step``: seconds per step of the iterative-training phase ÷ supervised (the
  harness's ``step_time`` times the CycleGAN phase).

Sizes. The quick profile runs at 48 px: measured on seeds 1 and 2 of ``ellipse_us``, at 64
px the oracle gains (0.824 against 0.714 / 0.705) while the method does not (0.606 / 0.647
against 0.625 / 0.682, with 16 CycleGAN epochs), so the quick oracle is an undertrained
reference and the 48-px difference (0.07 over 5 seeds) understates the distance to a
converged one. G_A's validation Dice levels off after about 10 CycleGAN epochs; 36 epochs
instead of 24 gave 0.742 / 0.613 against 0.744 / 0.625 (seeds 0 / 1). Run the quick
benchmark with ``--jobs 2 --threads 1`` on 2 cores: its rows train side by side.

Stability of the CycleGAN across seeds, measured on 5 training seeds on one host (AVX-512,
1 thread; the plan as above gives 0.630 there, 0.677 on the earlier host: a GAN's
trajectory depends on the floating-point kernels): a history pool of 50 fakes
(``--set history_pool=50``) 0.636; 4 restart trials of 5 epochs and 16 main epochs instead
of 3 × 3 + 24 (the same CycleGAN epochs in all) 0.615, with one seed at 0.456; weight
averages (``gan_ema=0.98``) lowered G_A's best validation Dice on seeds 0 and 1. None is
in the plan. On this host the U-Net of the rounds often ends below G_A's best epoch on the
validation cases (seed 0: G_A's best epoch 0.647, ends of rounds 1–3 0.565–0.579); the
final model is the best single epoch (``engine.final=best``), a round's in 4 of the 5 seeds of
the pool run (G_A's in the fifth).

Stage 1 alone (``rounds=0``, seeds 0 / 1, same host): 100 VAE epochs instead of 6 (VAE loss
350 to 77) gave pseudo labels of 0.590 / 0.521 against 0.586 / 0.480; the full profile's
network sizes at 48 px 0.270 / 0.551, 3.7x slower. The full profile's CycleGAN step is 3.25 s
on one thread (114x a supervised step, ``steptime.py --profile full``): about 65 min of
CycleGAN per seed; not run.

Session 9 (AVX-512 host, 1 thread). **The cohort is now 300 unlabelled training images**
(``N_TRAIN``; the phantom's default, used until session 8, is 60). The CycleGAN trains the
same number of steps either way. Stage 1 alone (``rounds=0``, seeds 0–3): pseudo labels of
Dice 0.612 with 300 images against 0.567 with 60, better in every seed (0.652 / 0.557 /
0.627 / 0.610 against 0.586 / 0.480 / 0.621 / 0.581). The full quick benchmark, 5 seeds
(21 min with ``--jobs 2``): stage-1 pseudo labels 0.527 (plain CycleGAN) / 0.558 (+ VAE-D)
/ 0.602 (+ DGCC) / 0.651 (both), the order of the paper's Table I; final test Dice 0.663
(0.667 / 0.624 / 0.668 / 0.679 / 0.677), against 0.630 with 60 images. The oracle, now
trained on 300 true masks, reaches 0.888 (0.751 with 60): the method is 0.225 below it.
The distance to a well-trained oracle was hidden by the small cohort's undertrained one;
the method stays bounded by its stage-1 pseudo labels (rounds change the training pseudo
labels by −0.03 … +0.07 per seed). LQSS-accepted pseudo labels 0.666 against 0.604
rejected (Spearman 0.26). The single-seed quick benchmark on this cohort takes 4 min 36 s
with ``--jobs 2 --threads 1`` (seed 0: method 0.666, oracle 0.899).

Two guards against the CycleGAN hiding the image in its masks were tried and not kept.
G_A's output is soft (2σ − 1); on a training image its background holds faint copies of
the image's edges and speckle (``log min(p, 1 − p)`` shows them), from which G_B rebuilds
the image. Stage 1 alone, 60-image cohort, seeds 0–4, mean pseudo-label Dice (plan 0.564):
Gaussian noise on the masks G_B reads, σ 0.1: 0.560, σ 0.3: 0.539; instance noise on the
masks D_B judges (real and generated), σ 0.2: 0.585, σ 0.5: 0.575 — within the seeds'
spread (sd ≈ 0.05).

Session 10: what G_A gets wrong (300-image cohort, stage 1 alone, seeds 0–3). G_A puts its
masks in the right place (centroid correlation with the truth 0.92 in y, 0.94 in x) but
compresses their size towards the mean: the least-squares slope of the mask's area against
the true area is 0.19–0.27 (1 would be right), the area's sd over the cohort 0.018–0.024
against 0.067 for the truth and 0.066 for the ellipse prior. Heads in the smallest quarter
(2.7 % of the image) get masks of 7.9 %, Dice 0.43; the largest quarter (20 %) gets 12 %,
Dice 0.72. On the images the masks are irregular blobs that follow dark regions: the dark
interior of a small head together with the shadow beside it, part of the interior of a
large one. A discriminator judges one mask at a time, and a mean-sized ellipse is a
realistic one, so nothing in the losses asks for the size distribution. Three probes on
seeds 0 / 1 (the plan: 0.652 / 0.557):

- G_B reads G_A's mask binarised (threshold 0.5, straight-through gradient), so the cycle
  cannot be served by faint values: 0.566 / 0.614, slope 0.14 / 0.27;
- 64 px instead of 48: 0.634 / 0.494;
- 72 CycleGAN epochs instead of 24: 0.644 / 0.585, slope 0.35 / 0.22;
- Gaussian noise (σ 0.2) on G_B's images before G_A reads them back in the mask cycle, in
  case G_B hides the mask in its fakes: 0.570 / 0.503, slope 0.01 / 0.20;
- a size term that is not in the paper: G_A's soft mask area pulled (L1, weight 10) to the
  prior's area at the same quantile among the last 128 generated masks: 0.371 / 0.574, slope
  −0.04 / 0.20 (the soft area can match while the thresholded mask does not).

None is in the plan.

Session 11: why the size is lost. ``benchmarks/spg_cycle_probe.py`` sends 200 prior masks
through G_B and then G_A, and compares G_A's masks with the masks G_B drew from. On the
benchmark's seed-0 rows (300-image cohort) G_A reads G_B's images almost perfectly and real
ones poorly (Dice, then the slope of mask area against true area):

| stage-1 row | G_B's images | real images |
|---|---|---|
| plain CycleGAN | 0.711, 0.35 | 0.527, 0.02 |
| + VAE-D | 0.803, 0.64 | 0.558, 0.11 |
| + DGCC | 0.968, 0.95 | 0.602, 0.20 |
| both (the method) | 0.946, 0.95 | 0.651, 0.25 |

The pictures say why: G_B draws the head as a smooth, uniformly dark ellipse with at most a
faint skull ring, on a speckle-free background with grid-like streaks. So G_A learns "dark
region = head" from the mask cycle, where it has exact targets, and on real images, whose
brain is only slightly darker than the tissue under speckle, it follows dark regions instead:
the fluid pocket beside the skull and the shadows. D_A does not push G_B's images towards
real speckle strongly enough to close that gap. Four more probes, stage 1 alone, seed 0
(plan 0.652), none kept:

- a Gaussian filter (σ 1 / 1.5 px) on every image G_A reads, so that real images look
  more like G_B's smooth ones: 0.502 / 0.428 (the fluid pockets become the darkest regions);
- two noise channels into G_B, so that it can draw speckle: 0.464 (seed 1: 0.218; G_B then
  draws a black blob and bright clutter, no skull);
- λ_cycle 3 instead of 10, so the adversarial loss weighs more for G_B: 0.674, slope 0.30
  (G_B's images gain a bright skull ring, G_A reads them at 0.855), but seed 1 0.522 against
  0.557; λ_cycle 1: 0.529; λ_adv 3: 0.655;
- the discriminators at 4x the learning rate: 0.423; twice their width (``d_features=64``):
  0.601;
- the mask cycle (prior mask → G_B → G_A), where G_A learns from G_B's images, weighted 2
  instead of 10 and the image cycle kept at 10: 0.569 / 0.540 on seeds 0 / 1 (plan 0.652 /
  0.557). G_A needs that cycle's exact targets to find the head at all.

Session 12. A 70×70 PatchGAN is about a quarter of the paper's image width; at 48 px it sees
the whole image, so D_A may judge layout rather than texture. A shallower D_A, so that it
judges local patches as the 70×70 one does on a large image, should then push G_B towards
speckle. Stage 1 alone, seed 0 (plan 0.652): 2 stride-2 layers (34×34 patches) 0.546; 1
layer (16×16) 0.528. With 1 layer G_B draws a periodic texture and a black head, and G_A
reads those images at 0.971 but real ones at 0.528 (slope 0.19). A generator without a
noise input cannot draw random speckle, however local the discriminator. Not kept. Real
high-frequency texture (a shuffled real image minus its Gaussian blur, σ 1.5 px) added to
G_B's images before G_A reads them in the mask cycle, so that G_A learns on speckled
images: 0.496 at full amplitude, 0.604 at half. Not kept.

The full profile (``--profile full --no-ablations``, session 12), stopped after 40 of its 60
CycleGAN epochs at 70 s each (2731 s; the VAE's 20 epochs 27 s): G_A's validation Dice
0.10–0.24 in the first 11 epochs, a peak of 0.308 at epoch 21, and 0.00–0.08 in each of the
last 12 epochs. Without restarts and with the wider networks it does not find the head.

Session 17. G_A's masks carry faint copies of the image's speckle, from which G_B rebuilds
the image in the image cycle. An image-cycle L1 on Gaussian-smoothed images (MONAI
``GaussianFilter`` on x and its reconstruction) no longer asks G_B to rebuild the speckle, so
G_A need not hide it. Stage 1 alone, seeds 0–3, training pseudo-label Dice (the plan, seeds
0 and 1 rerun this session to the same values: 0.652 / 0.557 / 0.627 / 0.610, mean 0.612):
σ 1.5 px 0.540 / 0.518 / 0.529 / 0.500 (0.522); σ 0.75 px 0.631 / 0.600 / 0.610 / 0.575
(0.604). Not kept.

Session 18. G_A maps real images to masks of nearly the same size whatever the head's size
(slope 0.19–0.25). A zoom-equivariance term (not in the paper) asks G_A's mask of a zoomed
image to be the zoomed mask of the image: L1 between ``σ(G_A(zoom(x)))`` and
``zoom(σ(G_A(x)))``, zoom 1 ± 0.3, weight 10 beside the cycle's 10. Stage 1 alone, seeds 0–3:
0.548 / 0.597 / 0.599 / 0.612 (0.589, plan 0.612), slope 0.23–0.29: G_A scales its masks with
the image but still does not find the head's own size. Not kept; the switch was removed.

Session 22 (EPYC host, 5 seeds, no ablations): zooming the rounds' images and pseudo labels
alike by U(1/1.6, 1.6), so that G_A's size errors in both directions meet at every apparent
size, lowered the final test Dice to 0.638 from 0.663 (4 of 5 seeds lower; stage 1
unchanged at 0.621). Not kept.

Session 23 (EPYC host, seed 0, scratch analysis of the round-0 pseudo labels of the 300
training images, Dice against the truth 0.621): an ellipse fitted to each pseudo label by
its second moments 0.645; that ellipse rescaled (0.4–2.2×) to the contour with the
strongest smoothed image gradient 0.633 (to the brightest contour 0.562: speckle, clutter
and the skull's gaps defeat a hand-made edge search); the fitted ellipse rescaled to the
true area 0.696, and the truth's own fitted ellipse 0.996. So correcting the size alone
would not reach the oracle: G_A's centres and orientations are off as well (area slope 0.26).
Nothing kept.

Session 24 (EPYC host): a minibatch standard deviation channel in D_B (``--set
d_minibatch_std=true``, ProGAN's layer, so that D_B can see a batch of same-sized masks).
Stage 1 alone, seeds 0–4: 0.685 / 0.624 / 0.608 / 0.596 / 0.585 (0.620) against 0.622 /
0.573 / 0.608 / 0.617 / 0.610 (0.606), area slope and sd unchanged. Five seeds of the quick
benchmark: final 0.682 against 0.663, paired +0.019 (−0.009 … +0.049), 3 of 5. Not in the
plan; the switch stays, off.

Session 26 (EPYC host, scratch ``aeseg train`` runs, ``benchmarks/NOTES.md``). The quick
profile's CycleGAN is undertrained: 24 epochs of 10 steps. With ``gan_epochs=240`` (stage 1
alone, seed 0, 21 min on one thread) G_A's pseudo labels reach 0.723 (slope 0.46) on this
cohort, and 0.918 (slope 0.94) on a rendering without fluid pockets, clutter and skull gaps,
where the quick CycleGAN gets 0.596: the implementation learns head sizes once trained long
enough. The rounds' U-Net was also trained on a sixth of the oracle's slices (20 epochs of
10 steps of batch 4 against 300 steps of batch 16); ``round_epochs=120`` matches them. Both
together, 5 seeds, test Dice 0.809 / 0.640 / 0.734 / 0.814 / 0.681 (0.736) against the plan's
0.663, paired +0.073 (+0.013 … +0.128), 4 of 5; the oracle 0.894. The longer rounds alone,
on the quick CycleGAN's pseudo labels: 0.674, +0.011 (−0.013 … +0.037). Not in the plan:
a job takes about 24 min on one thread, beyond the quick profile's 10 minutes.
The harness run of the same setting (seeds 1–4 reused from those jobs, seed 0 trained in
the harness): 0.725, paired +0.062 (+0.010 … +0.117); stage-2 rows U-Net 0.741, + LQSS
0.741, + IT 0.737, + wDice 0.725 (file ``..._gan_epochs240_round_epochs120_epyc.json``).

Session 27 (EPYC host, ``benchmarks/NOTES.md``). The ``long`` profile is that setting: the
quick profile's networks and images with ``gan_epochs=240`` and ``round_epochs=120``,
against the harness's long oracle (1000 steps of batch 16). That oracle, trained by hand on
the same cohort, gives 0.927 over 5 seeds (0.931 with 2000 steps, seeds 0 / 1): the quick
oracle's 0.894 is not converged, and the long setting is about 0.20 below a converged one.
Run through the harness in session 28 (about 90 min from scratch with ``--jobs 2 --no-ablations``,
file ``shape_prior_gan_ellipse_us_long_5seeds_epyc.json``): 0.725 against the long oracle's
0.927, 0.202 below it; its method and stage-2 rows equal the ``--set`` run's to the digit. Weight averages of the CycleGAN (``gan_ema=0.995``) on top of the long
setting smooth G_A's validation curve but leave the final Dice where it was: 0.725, paired
−0.000 (−0.029 … +0.027), stage-1 pseudo labels 0.671 against 0.664. With the same stage 1
loaded by every stage-2 row, LQSS adds 0.009 over one plain U-Net, the rounds 0.001 and the
noise-weighted Dice −0.001 (0.740 / 0.749 / 0.750 / 0.749); the main run, whose stage 2
follows its CycleGAN in the same job, came out lower (0.725) in 4 of 5 seeds. Session 28:
that is chance. Stage 2 rerun with two other seeds on each job's stage 1 gives 5-seed means
of 0.749 / 0.720 / 0.749 (one job's test Dice moves by sd 0.028), so the stage-2 rows do not
differ beyond stage 2's own randomness. What costs stage 1 most is the skull's gaps (weak or
missing boundary, in the task's specification): rendered without them (``--phantom
us_omit=skull_gaps``, same heads) the long CycleGAN's pseudo labels reach 0.839 / 0.783 on
seeds 0 / 1 against 0.722 / 0.612, and 0.918 (seed 0) without clutter and fluid as well; with the gaps, leaving out the
fluid or the clutter gives 0.634 / 0.684 (``benchmarks/NOTES.md``). The whole long method
on the no-gaps images, seeds 0–3 (scratch): 0.867 against that cohort's long oracle 0.956,
0.089 below it (0.191 on the benchmarked images, same seeds): the gaps are about half of
the distance. Session 29, stage 1 alone on the benchmarked images, seeds 0 / 1 (pseudo
labels against the plan's 0.723 / 0.612): λ_VAE 0.3 / 3 / 10 (the weight the paper
grid-searched) 0.620 / 0.564, 0.703 / 0.669, 0.660 / 0.570 (λ_VAE 3 on seeds 2 / 3: 0.666 /
0.640 against 0.652 / 0.723, four-seed mean 0.670 against 0.677); the paper's
resize-then-crop (``gan_crop=1.125``) 0.625 / 0.604; ``gan_lr=2e-4`` 0.718 / 0.615. The
long profile keeps the quick profile's values. Session 31: G_B draws a complete skull ring
around every prior mask, so the mask cycle never asks G_A to complete a missing boundary.
``boundary_dropout=0.5`` (1–3 sectors of the boundary removed from G_B's images before
G_A maps them back; new, off by default) gave 0.807 in session 31's scratch runs, which the
harness does not reproduce: ``--profile long --train-seeds 5 --set boundary_dropout=0.5``
(session 32, file ``shape_prior_gan_ellipse_us_long_5seeds_boundary_dropout0p5_epyc.json``)
gives pseudo labels of 0.571 against 0.664 and a final Dice of 0.642 against 0.725, better
on 1 of 5 seeds. Not in the plan. Session 31's scratch stage-1 jobs ran full-pass epochs
(75 steps, not the harness's 10): a CycleGAN of 18000 steps. That length without the switch
gives, on seed 0, pseudo labels of 0.827 and a final Dice of 0.864 against the oracle's
0.921 (scratch, ``benchmarks/NOTES.md`` session 32): the long profile's CycleGAN is still
undertrained. Session 33, through the harness: ``--profile long --train-seeds 5 --set
gan_epochs=960`` (9600 steps, about 41 min per seed on one thread; file
``shape_prior_gan_ellipse_us_long_5seeds_gan_epochs960_epyc.json``) gives pseudo labels of
0.703 against 0.664 and a final Dice of 0.766 against 0.725, paired +0.041 (−0.032 …
+0.111), better on 4 of 5 seeds: seed 2's CycleGAN peaked at its epoch 71 and fell (0.611
against 0.734). The interval spans zero, so the profile keeps ``gan_epochs=240``.
"""

from __future__ import annotations

import json

from harness import Plan, Variant, mean_sd

# Network and schedule sizes per profile: small on CPU (quick), closer to the paper (full).
_SIZES = {
    "quick": {"data.size": 48, "gan_features": 16, "d_features": 32, "gan_res_blocks": 3, "vae_features": 8,
              "engine.batch_size": 4, "vae_epochs": 6, "gan_epochs": 24, "round_epochs": 20, "rounds": 4, "gan_lr": 5e-4,
              "gan_starts": 3, "start_epochs": 3},
    "full": {"data.size": 96, "gan_features": 32, "d_features": 64, "gan_res_blocks": 6, "vae_features": 16,
             "engine.batch_size": 4, "vae_epochs": 20, "gan_epochs": 60, "round_epochs": 40, "rounds": 5, "gan_lr": 2e-4},
}
# the quick profile's networks and images, trained longer (session 26): ten times the
# CycleGAN steps, and rounds of 4800 slices each (the harness's long oracle sees 16000)
_SIZES["long"] = {**_SIZES["quick"], "gan_epochs": 240, "round_epochs": 120}
_PRIOR = {
    "ellipse_us": {"shape_prior": "ellipse", "ellipse_preset": "phantom"},
    "organ_ct": {"shape_prior": "aux_masks"},
}
# unlabelled training images per task (None: the phantom's default). The CycleGAN trains the
# same number of steps whatever the cohort's size; more images give it more variety.
N_TRAIN = {"ellipse_us": 300, "organ_ct": None}
_STAGE1 = {
    "gan_baseline": {"vae_discriminator": False, "dgcc": False},
    "gan_vae": {"vae_discriminator": True, "dgcc": False},
    "gan_dgcc": {"vae_discriminator": False, "dgcc": True},
}
_STAGE2 = {
    "unet_baseline": {"lqss": False, "iterative": False, "weighted_dice": False},
    "unet_lqss": {"lqss": True, "iterative": False, "weighted_dice": False},
    "unet_lqss_it": {"lqss": True, "iterative": True, "weighted_dice": False},
}


def plan(profile: str, task: str, setting: str | None) -> Plan:
    if task not in _PRIOR:
        raise SystemExit(f"shape_prior_gan benchmarks: task must be ellipse_us or organ_ct, not {task}")
    main = {**_SIZES[profile], **_PRIOR[task]}
    # the slowest variant (DGCC) first: with --jobs, rows start in this order
    ablations = [Variant(name, {**main, **ov, "rounds": 0}) for name, ov in reversed(_STAGE1.items())]
    # the oracle is the same U-Net at the same image size, trained on the true labels
    return Plan(overrides=main, ablations=ablations, baselines=("oracle",), gap_reference="oracle",
                baseline_overrides={"data.size": main["data.size"]},
                phantom={"n_train": N_TRAIN[task]} if N_TRAIN[task] else {},
                timing_phase=1, extra=_extra)


# ----------------------------------------------------------------------------- measurements


def _truths(b, split: str) -> dict:
    from aeseg.cohort.manifest import load_cohort
    from aeseg.cohort.reading import read_label

    co = load_cohort(b.workdir / "cohort")
    return {c.case_id: read_label(c.truth)[0] for c in co.cases if c.split == split and c.truth is not None}


def _dice_folder(folder, truths: dict) -> dict:
    from aeseg.cohort.reading import read_label
    from aeseg.quality.metrics import dice

    return {cid: dice(read_label(folder / f"{cid}.seg.nrrd")[0] > 0, t > 0) for cid, t in truths.items()}


def _extra(b, result: dict) -> dict:
    from scipy.stats import spearmanr

    from aeseg.quality.table import read_quality_csv

    main = b.runs["method"]
    train_t = _truths(b, "train")
    out: dict = {}

    # stage 1: G_A's pseudo labels per variant
    stage1 = {}
    for name in _STAGE1:
        r = b.runs.get(f"ablation_{name}")
        if r is not None:
            stage1[name] = {"train_pseudo_label_dice": mean_sd(list(_dice_folder(r.job / "pseudo_labels", train_t).values())),
                            "test_dice": r.test_dice}
    round0 = _dice_folder(main.job / "pseudo_labels" / "round0", train_t)
    stage1["gan_vae_dgcc"] = {"train_pseudo_label_dice": mean_sd(list(round0.values())), "test_dice": None}
    out["stage1"] = stage1

    # stage 2 rows, reusing the main run's stage 1
    overrides = dict(b.plan.overrides)
    stage2 = {}
    rows = [(f"stage2_{name}", b.method, {**overrides, **ov, "stage1_from": "@job:method"}, None)
            for name, ov in _STAGE2.items()]  # each training seed reuses its own main run's stage 1
    b.prefetch(rows)
    for (row, method, ov, _), name in zip(rows, _STAGE2):
        stage2[name] = b.run(row, method, ov).test_dice
    stage2["unet_lqss_it_wdice"] = main.test_dice
    stage2["oracle"] = b.runs["oracle"].test_dice
    out["stage2"] = stage2
    out["oracle_minus_method"] = round(b.runs["oracle"].test_dice["mean"] - main.test_dice["mean"], 4)

    # rounds: validation Dice and training pseudo-label Dice
    rounds = []
    k = 0
    while (main.job / "pseudo_labels" / f"round{k}").is_dir():
        d = _dice_folder(main.job / "pseudo_labels" / f"round{k}", train_t)
        rounds.append({"round": k, "train_pseudo_label_dice": mean_sd(list(d.values()))})
        k += 1
    for line in (main.job / "events.jsonl").read_text().splitlines():
        e = json.loads(line)
        if e.get("type") == "epoch" and "round_val_dice" in e:
            k = int(e["round"])
            if k < len(rounds):
                rounds[k]["val_dice"] = round(e["round_val_dice"], 4)
    out["rounds"] = rounds

    # triage: LQSS on G_A's pseudo labels
    rows = {r["case"]: r for r in read_quality_csv(main.job / "quality.csv")}
    ids = [c for c in round0 if c in rows]
    acc = [round0[c] for c in ids if rows[c]["lqss_accepted"] == "true"]
    rej = [round0[c] for c in ids if rows[c]["lqss_accepted"] != "true"]
    scores = [rows[c]["score"] for c in ids]
    final = _dice_folder(main.job / "pseudo_labels", {c: train_t[c] for c in ids})
    out["triage"] = {
        "n": len(ids), "accepted": mean_sd(acc), "rejected": mean_sd(rej),
        "spearman_score_vs_round0_dice": round(float(spearmanr(scores, [round0[c] for c in ids]).statistic), 4) if len(ids) > 2 else None,
        "spearman_score_vs_final_dice": round(float(spearmanr(scores, [final[c] for c in ids]).statistic), 4) if len(ids) > 2 else None,
    }

    # step times: the harness timed the CycleGAN phase (``timing_phase``) against supervised
    # steps on the oracle cohort (the training cohort has no label); a round is timed against the same.
    t_round = b.step_times(b.method, {**overrides, "stage1_from": str(main.job)}, phase_index=0)
    sup = result["step_time"]["supervised_s"]
    result["step_time"]["phase"] = "cyclegan"
    out["round_step"] = {"method_s": round(t_round, 4), "supervised_s": sup, "ratio": round(t_round / sup, 3),
                         "phase": "round1"}
    out["test_dice_per_case"] = {"method": main.per_case, "oracle": b.runs["oracle"].per_case}
    return out
