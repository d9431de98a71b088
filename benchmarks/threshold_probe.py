"""What ``engine.threshold=label_area`` would have given the rows of a finished benchmark run.

    python benchmarks/threshold_probe.py WORKDIR --rows noisy_baseline,method --seeds 12

``WORKDIR`` is one task's benchmark folder (``benchmarks/work/aide_noisy_organ_mid_quick_0``
or ``--workdir``'s subfolder). For every row and training seed the probe loads the job's
model, predicts the labelled training cases of the cohort the job trained on and the test
cases, computes the calibration the engine would have written
(:func:`aeseg.quality.calibration.label_area_offset`), and prints the test Dice at 0.5 and
with the calibrated threshold, then each row's means and the paired difference with a 90 %
bootstrap interval over seeds. The models are the ones the run trained, so this equals
rerunning the rows with ``--set-all engine.threshold=label_area`` (the threshold is
applied after training and does not change it), without the training. One thread; about
30 s per job of the ``noisy_organ`` quick profile.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "AnnotationEfficientSeg"))
sys.path.insert(0, str(HERE))

from aeseg.cohort.manifest import load_cohort  # noqa: E402
from aeseg.cohort.reading import read_label  # noqa: E402
from aeseg.data.dataset import build_slice_set  # noqa: E402
from aeseg.engine.inference import predict_case  # noqa: E402
from aeseg.engine.predict import load_model  # noqa: E402
from aeseg.quality.calibration import label_area_offset, shift  # noqa: E402
from aeseg.quality.metrics import dice  # noqa: E402
from table import bootstrap  # noqa: E402


def job_dice(job: Path, tests, truth: dict) -> tuple[float, float, float]:
    """(test Dice at 0.5, calibrated test Dice, calibrated threshold) of one job."""
    method, cfg, dev = load_model(job / "model", "cpu")
    cohort = load_cohort(Path(json.loads((job / "job.json").read_text())["cohort"]))
    labelled = [c for c in cohort.cases if c.split == "train" and c.label is not None]

    def probs(cases):
        s = build_slice_set(cases, cfg.data)
        return {r.case_id: predict_case(method, s, r, cfg.data.axis, dev) for r in s.records}

    train_p = probs(labelled)
    t, offset, _ = label_area_offset((train_p[c.case_id], read_label(c.label)[0]) for c in labelled)
    test_p = probs(tests)
    plain = float(np.mean([dice(test_p[k] > 0.5, truth[k]) for k in truth]))
    cal = float(np.mean([dice(shift(test_p[k], offset) > 0.5, truth[k]) for k in truth]))
    return plain, cal, t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--rows", default="noisy_baseline,method", help="comma-separated row names (job folder stems)")
    ap.add_argument("--seeds", type=int, default=1, help="training seeds per row (the job, then job_sN in seed order)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    cohort = load_cohort(a.workdir / "cohort")
    tests = [c for c in cohort.cases if c.split == "test" and c.truth is not None]
    truth = {c.case_id: read_label(c.truth)[0] > 0 for c in tests}
    for row in a.rows.split(","):
        plain, cal = [], []
        jobs = a.workdir / "jobs"
        later = sorted(jobs.glob(f"{row}_s*"), key=lambda j: int(j.name.rsplit("_s", 1)[1]))
        for job in ([jobs / row] + later)[:a.seeds]:  # the run's first training seed, then the others
            p, c, t = job_dice(job, tests, truth)
            plain.append(p)
            cal.append(c)
            print(f"{job.name:24s} threshold {t:.3f}  test Dice {p:.3f} -> {c:.3f}", flush=True)
        d = np.asarray(cal) - np.asarray(plain)
        ci = bootstrap(lambda idx: float(d[idx].mean()), len(d)) if len(d) >= 3 else None
        lo, hi = ci if ci is not None else (float("nan"), float("nan"))
        print(f"{row:24s} mean     test Dice {np.mean(plain):.3f} -> {np.mean(cal):.3f}  paired {d.mean():+.3f} "
              f"({lo:+.3f} … {hi:+.3f}), better in {int((d > 0).sum())} of {len(d)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
