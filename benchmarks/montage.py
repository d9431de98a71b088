"""Training images with the true outline and a job's pseudo label, one row per job.

``python benchmarks/montage.py --row NAME=COHORT:JOB [--row ...] --out FIG.png [--cases N]``

Each row shows the first ``N`` training cases of ``COHORT`` (a phantom cohort folder with
``truth/``) with the true outline in green and the outline of the job's
``pseudo_labels/<case>.seg.nrrd`` in magenta, and gives the mean pseudo-label Dice over
all training cases beside its name. For comparing stage-1 runs of ``shape_prior_gan`` on
cohorts rendered with and without some image features (``--phantom us_omit=...``); the
pseudo labels live on each case's own grid, so no resampling is involved.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "AnnotationEfficientSeg"))


def _row(spec: str) -> tuple[str, Path, Path]:
    name, sep, rest = spec.partition("=")
    cohort, sep2, job = rest.partition(":")
    if not (sep and sep2 and name and cohort and job):
        raise argparse.ArgumentTypeError(f"--row {spec!r}: expected NAME=COHORT:JOB")
    return name, Path(cohort), Path(job)


def _outline(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    m = mask > 0
    return m & ~ndimage.binary_erosion(m)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--row", type=_row, action="append", required=True, help="NAME=COHORT:JOB (repeatable)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cases", type=int, default=6)
    a = ap.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from aeseg.cohort.reading import read_image, read_label
    from aeseg.quality.metrics import dice

    fig, axes = plt.subplots(len(a.row), a.cases, figsize=(1.6 * a.cases + 1.4, 1.7 * len(a.row)), squeeze=False)
    for r, (name, cohort, job) in enumerate(a.row):
        truths = sorted((cohort / "truth").glob("train_*"))
        if not truths:
            raise SystemExit(f"{cohort}: no truth/train_* files")
        scores = []
        for k, tpath in enumerate(truths):
            cid = tpath.name.split(".")[0]
            ppath = job / "pseudo_labels" / f"{cid}.seg.nrrd"
            if not ppath.is_file():
                raise SystemExit(f"{job}: no pseudo label for {cid}")
            truth, pseudo = read_label(tpath)[0] > 0, read_label(ppath)[0] > 0
            scores.append(dice(pseudo, truth))
            if k >= a.cases:
                continue
            img = read_image(next((cohort / "images").glob(f"{cid}.*"))).array.reshape(truth.shape[-2:])
            rgb = np.repeat(((img - img.min()) / max(float(np.ptp(img)), 1e-6))[..., None], 3, axis=-1)
            rgb[_outline(truth.reshape(img.shape))] = (0.1, 0.9, 0.1)
            rgb[_outline(pseudo.reshape(img.shape))] = (0.95, 0.1, 0.95)
            ax = axes[r, k]
            ax.imshow(rgb, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(f"{cid}: {scores[-1]:.2f}", fontsize=7)
        axes[r, 0].set_ylabel(f"{name}\nmean {np.mean(scores):.3f}", fontsize=8)
        print(f"{name}: mean pseudo-label Dice {np.mean(scores):.3f} over {len(scores)} training cases")
    fig.suptitle("green: truth, magenta: pseudo label (Dice per case)", fontsize=9)
    fig.tight_layout()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    import io

    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, dpi=80, format="png")
    buf.seek(0)  # speckle compresses badly: a 64-colour palette keeps the file small
    Image.open(buf).convert("RGB").quantize(64).save(a.out, optimize=True)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
