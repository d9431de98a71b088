"""Run one benchmark: ``python benchmarks/run.py --method M --task T [--profile quick|full]``.

Writes ``benchmarks/results/<method>_<task>[_<setting>][_<noise>].json``; see
``benchmarks/harness.py`` for what is measured and ``benchmarks/table.py`` for the
README table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import PROFILES, run_benchmark  # noqa: E402


def _value(text: str):
    """A --set value as JSON when it parses (50, 0.5, true), else the string itself."""
    import json

    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--method", required=True)
    ap.add_argument("--task", required=True, choices=["noisy_organ", "ellipse_us", "organ_ct", "lesion_pa", "domain_shift"])
    ap.add_argument("--profile", default="quick", choices=["quick", "long", "full"])
    ap.add_argument("--setting", choices=["noisy", "semi", "mixed", "1pct", "5pct"],
                    help="noisy_organ: label setting; lesion_pa: share of present images with a mask")
    ap.add_argument("--noise", choices=["high", "mid", "low"], help="noisy_organ: noise level (mean Dice 0.41 / 0.62 / 0.80)")
    ap.add_argument("--seed", type=int, default=0, help="phantom seed (and the first training seed)")
    ap.add_argument("--train-seeds", type=int, default=1,
                    help="train every run with this many seeds (seed, seed+1, ...) on the same cohort; "
                         "test Dice per case is averaged over them")
    ap.add_argument("--no-ablations", action="store_true")
    ap.add_argument("--ablation", action="append", default=[], metavar="NAME",
                    help="run only this ablation row of the plan (repeatable; e.g. with --reuse, to add rows to a run; "
                         "the results file has the usual name: give --out to keep a full run's file)")
    ap.add_argument("--reuse", action="store_true",
                    help="keep the phantom cohort and every finished run whose job.json matches (same cohort, same "
                         "config); marked 'reused' in the results. A matching run that was stopped before its end "
                         "(killed, machine down) goes on from its last checkpoint instead of starting again")
    ap.add_argument("--out", type=Path, help="results folder (default benchmarks/results)")
    ap.add_argument("--workdir", type=Path,
                    help="folder of the phantom cohorts and job folders (default benchmarks/work); another folder "
                         "lets a variant (--set) train beside the plan's run without replacing its jobs")
    ap.add_argument("--threads", type=int, default=0,
                    help="CPU threads per process (0: PyTorch default); 1 lets two benchmarks share 2 cores fairly")
    ap.add_argument("--jobs", type=int, default=1,
                    help="training processes side by side (the independent runs of a benchmark; use with --threads, "
                         "jobs × threads ≤ cores)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="an extra method setting on top of the plan's, for the method and its ablation rows "
                         "(repeatable; e.g. --set history_pool=50); recorded in the results' overrides")
    ap.add_argument("--set-all", action="append", default=[], metavar="KEY=VALUE",
                    help="a setting for every row, baselines included (repeatable; e.g. --set-all train_rotation=60, "
                         "an augmentation the comparison must share); recorded in the results' sets_all")
    ap.add_argument("--phantom", action="append", default=[], metavar="KEY=VALUE",
                    help="a phantom setting on top of the plan's (repeatable; e.g. --phantom n_clean=4 --phantom "
                         "n_train=48, fields of aeseg.data.phantoms.PhantomConfig); recorded in the results' phantom_sets")
    ap.add_argument("--epochs", type=int, default=0,
                    help="train every row (method, ablations, baselines) this many epochs instead of the plan's")
    a = ap.parse_args(argv)
    from aeseg.engine.config import parse_sets
    from aeseg.errors import ConfigError

    try:
        sets = {k: _value(v) for k, v in parse_sets(a.set).items()}
        sets_all = {k: _value(v) for k, v in parse_sets(a.set_all).items()}
        phantom = {k: _value(v) for k, v in parse_sets(a.phantom).items()}
    except ConfigError as e:  # a KEY=VALUE without "=" is a usage error
        ap.error(str(e))
    from dataclasses import fields

    from aeseg.data.phantoms import PhantomConfig

    known = {f.name for f in fields(PhantomConfig)} - {"task", "seed", "setting", "noise"}  # these have their own options
    if unknown := sorted(set(phantom) - known):
        ap.error(f"--phantom {', '.join(unknown)}: not one of {', '.join(sorted(known))} "
                 "(--seed, --setting and --noise set the others)")
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
        PROFILES[a.profile]["engine.threads"] = a.threads
    if a.ablation and a.no_ablations:
        ap.error("--ablation and --no-ablations exclude each other")
    ablations = tuple(a.ablation) if a.ablation else not a.no_ablations
    run_benchmark(a.method, a.task, a.profile, a.setting, a.noise, a.seed, ablations, a.out, a.reuse,
                  tuple(range(a.seed, a.seed + a.train_seeds)), a.jobs, sets, a.epochs or None, a.workdir,
                  sets_all, phantom)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
