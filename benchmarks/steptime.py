"""Step-time ratios alone: ``python benchmarks/steptime.py --method M --task T [--rounds 3]``.

The ratio a benchmark reports (method step ÷ supervised step, same batch, same process)
is measured once, at the end of a run, on whatever else the machine is doing then. This
script measures it ``--rounds`` times on an existing benchmark cohort (the run's
``benchmarks/work/...`` folder, or a fresh phantom), alternating supervised and method
steps, and prints every ratio and their median. Run it on an otherwise idle machine.
Writes ``benchmarks/results/steptime/<method>_<task>[_<profile>][_<set>...].json`` (no profile suffix for quick).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Bench, machine  # noqa: E402

from aeseg.engine.config import parse_sets  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--method", required=True)
    ap.add_argument("--task", required=True)
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--setting")
    ap.add_argument("--noise")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra method settings on top of the plan's (e.g. views=2)")
    a = ap.parse_args(argv)
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    b = Bench(a.method, a.task, a.profile, a.setting, a.noise, reuse=True)
    b.build_cohort()
    overrides = {**b.plan.overrides, **parse_sets(a.set)}  # strings: resolve_config coerces them as for aeseg --set
    ratios = [b.step_ratio(overrides) for _ in range(a.rounds)]
    out = {"method": a.method, "task": a.task, "profile": a.profile, "settings": a.set, "rounds": ratios,
           "median_ratio": round(statistics.median(r["ratio"] for r in ratios), 3),
           "machine": machine(), "date": time.strftime("%Y-%m-%d", time.gmtime())}
    for r in ratios:
        print(f"  method {r['method_s']:.4f} s / supervised {r['supervised_s']:.4f} s = {r['ratio']:.2f}")
    print(f"  median ratio {out['median_ratio']}")
    path = Path(__file__).resolve().parent / "results" / "steptime" / \
        f"{a.method}_{a.task}{'' if a.profile == 'quick' else '_' + a.profile}{''.join('_' + s.replace('=', '') for s in a.set)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
