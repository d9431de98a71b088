"""Training images with the true outline and a job's pseudo label, one row per job.

``python benchmarks/montage.py --row NAME=COHORT:JOB [--row ...] --out FIG.png``

Each row shows the first four training cases of ``COHORT`` (a phantom cohort
folder with ``truth/``) with the true outline and the outline of the job's
``pseudo_labels/<case>.seg.nrrd`` (the report's overview grid,
:func:`aeseg.report.overview.plot_overview`), and gives the mean pseudo-label Dice over all
training cases in each panel's title (four panels per row, as the overview grid lays them out). For comparing stage-1 runs of ``shape_prior_gan`` on
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--row", type=_row, action="append", required=True, help="NAME=COHORT:JOB (repeatable)")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)

    from PIL import Image

    from aeseg.cohort.reading import read_image, read_label
    from aeseg.quality.metrics import dice
    from aeseg.report.overview import MAX_COLUMNS, OverviewCase, plot_overview

    panels: list[OverviewCase] = []
    for name, cohort, job in a.row:
        truths = sorted((cohort / "truth").glob("train_*"))
        if not truths:
            raise SystemExit(f"{cohort}: no truth/train_* files")
        scores, row = [], []
        for k, tpath in enumerate(truths):
            cid = tpath.name.split(".")[0]
            ppath = job / "pseudo_labels" / f"{cid}.seg.nrrd"
            if not ppath.is_file():
                raise SystemExit(f"{job}: no pseudo label for {cid}")
            truth, pseudo = read_label(tpath)[0] > 0, read_label(ppath)[0] > 0
            scores.append(dice(pseudo, truth))
            if k < MAX_COLUMNS:
                shape = truth.shape[-2:]
                img = read_image(next((cohort / "images").glob(f"{cid}.*"))).array.reshape(shape)
                row.append(OverviewCase(cid, img, {"Truth": truth.reshape(shape), "Pseudo label": pseudo.reshape(shape)},
                                        subtitle=f"Dice {scores[-1]:.2f}"))
        if len(row) < MAX_COLUMNS:
            raise SystemExit(f"{cohort}: {len(row)} training cases; a row needs {MAX_COLUMNS}")
        for c in row:
            c.case_id = f"{name} (mean {np.mean(scores):.3f})\n{c.case_id}"
        panels += row
        print(f"{name}: mean pseudo-label Dice {np.mean(scores):.3f} over {len(scores)} training cases")
    plot_overview(panels, a.out, title="training images: true outline and pseudo label",
                  colours={"Truth": (0.2, 0.9, 0.2), "Pseudo label": (0.95, 0.1, 0.95)})
    Image.open(a.out).convert("RGB").quantize(64).save(a.out, optimize=True)  # speckle compresses badly
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
