"""Compare two benchmark results of the same seeds, seed by seed.

``python benchmarks/compare.py A.json B.json [--row method]`` prints, for every training
seed both files ran on the same phantom, the row's test Dice in A and in B and their
difference, then the mean difference with a 90 % bootstrap interval over the seeds and
how many seeds B wins. ``python benchmarks/compare.py A.json --row method --against
noisy_baseline`` compares two rows of one file the same way (B = ``--row``, A =
``--against``).

Two settings run on the same seeds share each seed's phantom, baselines and initial
weights, so their difference seed by seed varies far less than either gap covered does
(whose interval over 6 seeds spans tens of points, see ``table.gap_interval``). A
setting is better only if the interval of the difference excludes zero.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from table import bootstrap  # noqa: E402


class CompareError(ValueError):
    pass


def seed_values(result: dict, row: str) -> dict[int, float]:
    """Training seed → the row's mean test Dice in that seed (from ``runs``/``ablation_runs``)."""
    runs = {**(result.get("runs") or {}), **{f"ablation_{k}": v for k, v in (result.get("ablation_runs") or {}).items()}}
    if row not in runs:
        raise CompareError(f"no row '{row}' (rows: {', '.join(sorted(runs))})")
    seeds = result.get("train_seeds") or [result.get("seed", 0)]
    means = runs[row].get("seed_means") or [runs[row]["test_dice"]["mean"]]
    if len(means) != len(seeds):
        raise CompareError(f"row '{row}': {len(means)} seed means for {len(seeds)} seeds")
    return dict(zip(seeds, means))


def paired_difference(a: dict, b: dict, row: str = "method", level: float = 0.9,
                      draws: int = 4000, against: str | None = None) -> dict:
    """B − A for the row over the seeds both ran: per seed, the mean, a bootstrap interval
    (seeded, so it prints the same every time) and B's wins. Refuses results of different
    tasks, settings, phantoms or hosts (``host_note``): their seeds are not the same
    experiments. ``against``: A's row to compare with (default: the same row)."""
    for key in ("task", "setting", "noise", "profile", "seed", "phantom_sets", "host_note"):
        if (a.get(key) or None) != (b.get(key) or None):  # an older file has no phantom_sets
            raise CompareError(f"the results differ in '{key}' ({a.get(key)!r} / {b.get(key)!r}): not paired")
    va, vb = seed_values(a, against or row), seed_values(b, row)
    seeds = sorted(set(va) & set(vb))
    if not seeds:
        raise CompareError("the results share no training seed")
    diffs = [vb[s] - va[s] for s in seeds]
    mean = sum(diffs) / len(diffs)
    interval = bootstrap(lambda idx: sum(diffs[i] for i in idx) / len(idx), len(diffs), level, draws) \
        if len(diffs) >= 3 else None
    return {"row": row if against in (None, row) else f"{row} against {against}", "seeds": seeds, "a": [va[s] for s in seeds], "b": [vb[s] for s in seeds],
            "diff": diffs, "mean": mean, "interval": interval, "b_wins": sum(d > 0 for d in diffs)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path, nargs="?", help="default: A itself (then give --against)")
    ap.add_argument("--row", default="method", help="method, a baseline, or ablation_<name>")
    ap.add_argument("--against", help="compare --row of B with this row of A (e.g. noisy_baseline)")
    args = ap.parse_args(argv)
    if args.b is None and not args.against:
        ap.error("give a second file, or --against ROW to compare two rows of one file")
    try:
        a = json.loads(args.a.read_text())
        b = json.loads(args.b.read_text()) if args.b else a
        d = paired_difference(a, b, args.row, against=args.against)
    except (OSError, ValueError, KeyError) as e:
        print(f"compare: {e}", file=sys.stderr)
        return 2
    print(f"{d['row']}: B − A over {len(d['seeds'])} seeds")
    for s, x, y, z in zip(d["seeds"], d["a"], d["b"], d["diff"]):
        print(f"  seed {s:>3}  A {x:.3f}  B {y:.3f}  {z:+.3f}")
    ci = f", 90 % interval {d['interval'][0]:+.3f} … {d['interval'][1]:+.3f}" if d["interval"] else ""
    print(f"  mean {d['mean']:+.3f}{ci}; B better in {d['b_wins']} of {len(d['seeds'])} seeds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
