"""Figures of benchmark results: one PNG per ``benchmarks/results/*.json``.

``python benchmarks/figures.py [RESULT.json | DIR ...] [--out DIR]`` draws the given result
files, or every one in the folders (default: ``benchmarks/results``; out:
``benchmarks/figures/``); ``run.py`` draws each new result beside its JSON.

One figure per result: test Dice of every row (mean over test cases, a bar; ± sd over
test cases, a whisker; one dot per training seed's mean when there are several seeds),
the band between the gap's reference row (noisy baseline or supervised-only) and the
oracle, and the issue's target as a dashed line where the issue sets one for that task and
setting (``TARGETS``, ``TARGET_WHERE``): a share of that gap, or a distance below the oracle.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "AnnotationEfficientSeg"))

# The issues' targets: ("gap", share of the reference → oracle gap) or ("oracle", distance below the oracle),
# and the result fields that say where the issue sets it (AIDE's 60 % is at the middle noise level only).
TARGETS: dict[str, tuple[str, float]] = {
    "meta_reweight": ("gap", 0.60),
    "aide": ("gap", 0.60),
    "presence_absence": ("gap", 0.50),
    "shape_prior_gan": ("oracle", 0.05),
}
TARGET_WHERE: dict[str, dict[str, str]] = {
    "meta_reweight": {"task": "noisy_organ", "noise": "mid"},
    "aide": {"task": "noisy_organ", "noise": "mid"},
    "presence_absence": {"task": "lesion_pa", "setting": "1pct"},
    "shape_prior_gan": {"task": "ellipse_us"},
}
# row order, bottom to top after reversal: references first, the method, ablations, the oracle last
_BASELINE_ORDER = ("noisy_baseline", "clean_only")
_LABELS = {"noisy_baseline": "noisy baseline", "clean_only": "supervised-only", "oracle": "oracle", "method": "method"}
_COLOURS = {"baseline": (0.6, 0.6, 0.6), "method": (0.12, 0.47, 0.71), "ablation": (0.62, 0.78, 0.91),
            "oracle": (0.3, 0.3, 0.3)}


@dataclass
class Row:
    name: str
    kind: str  # baseline | method | ablation | oracle
    mean: float
    sd: float
    seed_means: list[float] = field(default_factory=list)


def rows_of(result: dict) -> list[Row]:
    """The result's rows in drawing order (top to bottom): baselines, method, ablations, oracle."""
    td, runs, abl_runs = result["test_dice"], result.get("runs") or {}, result.get("ablation_runs") or {}

    def seeds(key: str, of: dict = runs) -> list[float]:
        return list((of.get(key) or {}).get("seed_means") or [])

    out = [Row(_LABELS[k], "baseline", td[k]["mean"], td[k]["sd"], seeds(k)) for k in _BASELINE_ORDER if k in td]
    if "method" in td:
        out.append(Row(result["method"], "method", td["method"]["mean"], td["method"]["sd"], seeds("method")))
    for name, d in (result.get("ablations") or {}).items():
        if d and d.get("mean") is not None:
            out.append(Row(f"↳ {name}", "ablation", d["mean"], d["sd"], seeds(name, abl_runs)))
    if "oracle" in td:
        out.append(Row("oracle", "oracle", td["oracle"]["mean"], td["oracle"]["sd"], seeds("oracle")))
    return out


def target_of(result: dict) -> tuple[str, float] | None:
    """The method's target when the issue sets one for this result's task and setting."""
    method = result.get("method", "")
    where = TARGET_WHERE.get(method, {})
    if method not in TARGETS or any(result.get(k) != v for k, v in where.items()):
        return None
    return TARGETS[method]


def target_dice(result: dict) -> float | None:
    """The test Dice the method's issue asks for on this result, or None."""
    kind_value = target_of(result)
    td = result["test_dice"]
    if kind_value is None or "oracle" not in td:
        return None
    kind, value = kind_value
    oracle = td["oracle"]["mean"]
    if kind == "oracle":
        return oracle - value
    ref = td.get(result.get("gap_reference") or "")
    return None if ref is None else ref["mean"] + value * (oracle - ref["mean"])


def headline(result: dict) -> str:
    """The number the method's target is about, and the target where the issue sets one here."""
    kind = TARGETS.get(result.get("method", ""), ("gap", None))[0]
    value = (target_of(result) or (kind, None))[1]
    td = result["test_dice"]
    if kind == "oracle" and "oracle" in td and "method" in td:
        text = f"oracle − method {td['oracle']['mean'] - td['method']['mean']:.3f}"
        return text + ("" if value is None else f" (target ≤ {value:.2f})")
    g = result.get("gap_covered")
    if g is None:
        return ""
    text = f"gap covered {100 * g:.0f} %"
    same = ((result.get("extra") or {}).get("gap_covered_same_network") or {}).get("method")
    if same is not None:  # presence_absence: also between its own network's bounds (the paper's measure)
        text += f", {100 * same:.0f} % between the codec's own bounds"
    return text + ("" if value is None else f" (target ≥ {100 * value:.0f} %)")


def title_of(result: dict, width: int = 90) -> str:
    """Method, task and the setting as the README tables word it, the setting wrapped at
    ``width`` characters so that a long note stays inside the figure."""
    import textwrap

    from table import setting_text

    setting = "\n".join(textwrap.wrap(setting_text(result), width))
    return f"{result.get('method', '?')} on {result.get('task', '?')}\n{setting}"


def draw(result: dict, path: Path) -> Path:
    """Draw one result (see the module docstring) to ``path`` (PNG)."""
    from aeseg.report._figure import new_figure, save_png

    rows = rows_of(result)
    if not rows:
        raise ValueError("the result has no test Dice rows")
    title = title_of(result) + "\n" + headline(result)
    fig = new_figure(7.5, 0.8 + 0.42 * len(rows) + 0.16 * title.count("\n"))
    ax = fig.add_subplot(1, 1, 1)
    ys = list(range(len(rows)))[::-1]  # first row at the top
    for y, r in zip(ys, rows):
        ax.barh(y, r.mean, xerr=r.sd, color=_COLOURS[r.kind], height=0.6, error_kw={"elinewidth": 0.8, "capsize": 2})
        ax.text(0.01, y, f"{r.mean:.3f}", va="center", ha="left", fontsize=8,
                color="black" if r.kind == "ablation" else "white")
        if len(r.seed_means) > 1:
            ax.plot(r.seed_means, [y] * len(r.seed_means), "k.", markersize=4)
    ax.set_yticks(ys, [r.name for r in rows])
    td = result["test_dice"]
    ref = td.get(result.get("gap_reference") or "")
    if ref is not None and "oracle" in td and result.get("gap_reference") != "oracle":
        ax.axvspan(ref["mean"], td["oracle"]["mean"], color=(1.0, 0.9, 0.6), alpha=0.35, zorder=0)
    tgt = target_dice(result)
    if tgt is not None:
        ax.axvline(tgt, color=(0.84, 0.15, 0.16), linestyle="--", linewidth=1)
        ax.text(tgt, ys[-1] - 0.45, " target", color=(0.84, 0.15, 0.16), fontsize=8, va="top")
    ax.set_xlim(0, 1)
    ax.set_xlabel("test Dice (bar: mean over test cases, whisker: ± sd, dots: training seeds)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_png(fig, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="*", type=Path, default=[HERE / "results"],
                    help="result files or folders of them")
    ap.add_argument("--out", type=Path, default=HERE / "figures")
    a = ap.parse_args(argv)
    files = sorted(f for p in a.results for f in (p.glob("*.json") if p.is_dir() else [p]))
    if not files:
        print(f"no result files in {', '.join(map(str, a.results))}", file=sys.stderr)
        return 1
    a.out.mkdir(parents=True, exist_ok=True)
    for f in files:
        result = json.loads(f.read_text())
        if "test_dice" not in result:
            continue
        print(draw(result, a.out / (f.stem + ".png")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
