"""Where ``shape_prior_gan``'s pseudo labels go wrong: G_A on G_B's images against G_A on real ones.

    python benchmarks/spg_cycle_probe.py JOB [JOB ...] [--n 200] [--png out.png]

For each trained ``shape_prior_gan`` job folder (a benchmark row such as
``benchmarks/work/shape_prior_gan_ellipse_us_quick_0/jobs/method``, or a stage-1 run with
``rounds=0``), prints two rows:

- ``fake``: the mask cycle of stage 1. Shape-prior masks (the method's own prior, rebuilt
  from the job's cohort and seed) → G_B → G_A; Dice of G_A's mask against the mask G_B
  drew from, and the least-squares slope of G_A's mask area against that mask's area;
- ``real``: G_A's pseudo labels of the training images (``pseudo_labels/round0/`` when the
  job ran rounds, else ``pseudo_labels/``) against the cohort's true masks, Dice and slope.

A slope of 1 means G_A follows the size of what it segments; near 0, it draws every mask
at the mean size. When ``fake`` is near 1 and ``real`` is not, G_A has learnt to read G_B's
images, not real ones: the two image domains differ in what shows the mask. ``--png``
saves a figure of 8 prior masks with G_B's images and G_A's masks, and 8 training images
with G_A's masks (red) and the truth (green). One thread; seconds per job.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "AnnotationEfficientSeg"))

from aeseg.cohort.manifest import load_cohort  # noqa: E402
from aeseg.cohort.reading import read_label  # noqa: E402
from aeseg.quality.metrics import dice  # noqa: E402
from aeseg.data.dataset import load_cohort_data  # noqa: E402
from aeseg.engine.predict import load_model  # noqa: E402


def dice_and_slope(pred: list[np.ndarray], ref: list[np.ndarray]) -> tuple[float, float]:
    """Mean Dice of boolean masks ``pred`` against ``ref`` (pairwise), and the least-squares
    slope of their area shares (pred on ref)."""
    d = [dice(p, r) for p, r in zip(pred, ref)]
    areas = np.array([(r.mean(), p.mean()) for p, r in zip(pred, ref)])
    return float(np.mean(d)), float(np.polyfit(areas[:, 0], areas[:, 1], 1)[0])


def load_method(job: Path):
    """The job's trained method, given its cohort and seed (so the shape prior is the one it
    trained with): the engine's :func:`load_model` builds it without data."""
    if not (job / "job.json").is_file():
        raise SystemExit(f"{job}: not a job folder (no job.json)")
    spec = json.loads((job / "job.json").read_text(encoding="utf-8"))
    if spec["method"] != "shape_prior_gan":
        raise SystemExit(f"{job}: method {spec['method']}, not shape_prior_gan")
    method, cfg, _ = load_model(job, "cpu")
    cohort = load_cohort(spec["cohort"])
    data = load_cohort_data(cohort, cfg.data, with_truth=True)
    method.ctx = dataclasses.replace(method.ctx, data=data, seed=int(spec["seed"]), cohort=cohort)
    return method, data


def probe(job: Path, n: int, png: Path | None) -> dict:
    method, data = load_method(job)
    prior = method.aux[:n]
    with torch.no_grad():
        fake_x = method.G_B(2 * prior - 1)
        fake_m = torch.sigmoid(method._generate(fake_x, averaged=True)) > 0.5
    fd, fs = dice_and_slope(list(fake_m.numpy()), list(prior.numpy() > 0.5))
    sub = job / "pseudo_labels" / "round0"
    sub = sub if sub.is_dir() else job / "pseudo_labels"
    recs, preds = [], []
    for rec in data.train.records:
        f = sub / f"{rec.case_id}.seg.nrrd"
        if rec.truth_zyx is not None and f.exists():
            recs.append(rec)
            preds.append(read_label(f)[0] > 0)
    if not preds:
        raise SystemExit(f"{job}: no pseudo labels of training cases with a true mask")
    truths = [rec.truth_zyx > 0 for rec in recs]
    rd, rs = dice_and_slope(preds, truths)
    if png is not None:
        _figure(png, prior, fake_x, fake_m, data, recs, preds, truths)
    return {"job": str(job), "fake": {"dice": round(fd, 3), "slope": round(fs, 2), "n": len(prior)},
            "real": {"dice": round(rd, 3), "slope": round(rs, 2), "n": len(preds)}}


def _figure(png: Path, prior, fake_x, fake_m, data, recs, preds, truths) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = min(8, len(prior), len(preds))
    fig, ax = plt.subplots(2, k, figsize=(1.8 * k, 4))
    for j in range(k):
        ax[0, j].imshow(fake_x[j, 0], cmap="gray")
        ax[0, j].contour(prior[j, 0], [0.5], colors="lime", linewidths=0.6)
        ax[0, j].contour(fake_m[j, 0].float(), [0.5], colors="red", linewidths=0.6)
        ax[1, j].imshow(data.train.images[recs[j].start, 0], cmap="gray")
        t = torch.nn.functional.interpolate(torch.from_numpy(truths[j].squeeze()[None, None].astype(np.float32)),
                                            size=data.train.images.shape[-2:], mode="nearest")[0, 0]
        p = torch.nn.functional.interpolate(torch.from_numpy(preds[j].squeeze()[None, None].astype(np.float32)),
                                            size=data.train.images.shape[-2:], mode="nearest")[0, 0]
        ax[1, j].contour(t, [0.5], colors="lime", linewidths=0.6)
        ax[1, j].contour(p, [0.5], colors="red", linewidths=0.6)
    ax[0, 0].set_title("G_B(prior mask) → G_A", fontsize=8, loc="left")
    ax[1, 0].set_title("training image → G_A", fontsize=8, loc="left")
    for a in ax.flat:
        a.axis("off")
    fig.tight_layout()
    fig.savefig(png, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("jobs", nargs="+", type=Path)
    ap.add_argument("--n", type=int, default=200, help="prior masks sent through G_B and G_A")
    ap.add_argument("--png", type=Path, default=None, help="figure of the first job")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    for i, job in enumerate(a.jobs):
        print(json.dumps(probe(job, a.n, a.png if i == 0 else None)), flush=True)


if __name__ == "__main__":
    main()
