"""``benchmarks/montage.py``: pseudo-label Dice per row and the montage PNG."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import montage  # noqa: E402

from aeseg.cohort.reading import read_label  # noqa: E402
from aeseg.data import phantoms as ph  # noqa: E402
from aeseg.io.segmentation import Segment, write_seg_nrrd  # noqa: E402
from aeseg.quality.metrics import dice  # noqa: E402


def test_montage_scores_each_jobs_pseudo_labels_against_the_truth(tmp_path, capsys):
    cohort = tmp_path / "cohort"
    ph.make_phantom_cohort(cohort, ph.PhantomConfig("ellipse_us", seed=3, n_train=5, n_val=0, n_test=0, size=40))
    job = tmp_path / "job"
    expected = []
    for k, t in enumerate(sorted((cohort / "truth").glob("train_*"))):
        truth, geom = read_label(t)
        pseudo = truth.copy() if k == 0 else np.roll(truth, 3, axis=-1)  # one exact, the others shifted
        expected.append(dice(pseudo > 0, truth > 0))
        write_seg_nrrd(job / "pseudo_labels" / f"{t.name.split('.')[0]}.seg.nrrd", [Segment("head", pseudo)], geom)
    assert expected[0] == 1.0 and expected[1] < 1.0
    out = tmp_path / "fig.png"
    assert montage.main(["--row", f"exact and shifted={cohort}:{job}", "--out", str(out)]) == 0
    assert f"mean pseudo-label Dice {np.mean(expected):.3f} over 5 training cases" in capsys.readouterr().out
    assert Image.open(out).size[0] > 100
    # a job without the cohort's pseudo labels is refused by name
    (job / "pseudo_labels" / "train_004.seg.nrrd").unlink()
    with pytest.raises(SystemExit, match="no pseudo label for train_004"):
        montage.main(["--row", f"r={cohort}:{job}", "--out", str(out)])
    with pytest.raises(SystemExit):
        montage.main(["--row", "no-colon-here", "--out", str(out)])
