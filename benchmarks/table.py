"""Print the README's benchmark tables from ``benchmarks/results/*.json``.

``python benchmarks/table.py [results_dir]`` prints Markdown, one table per kind of task:

- label noise / scarce labels (``noisy_organ``): test Dice (mean ± sd over test cases;
  with several training seeds, a case's Dice is its mean over seeds) of the method and
  the baselines, gap covered (with 3 or more seeds, its 90 % bootstrap interval over
  seeds), step-time ratio, triage;
- shape-prior pseudo labels (``ellipse_us``, ``organ_ct``): Dice of the stage-1 pseudo
  labels per variant, the stage-2 rows, the oracle, LQSS triage, step ratios;
- presence/absence (``lesion_pa``): Dice on the present test images of every row, the
  gap covered between supervised-only and the oracle (and, where the plan's ``seg_only``
  rows ran, between the same codec trained on the annotated images and on all: the
  paper's measure), the share of absent test images
  predicted empty.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent


def fmt(d: dict | None) -> str:
    if not d or d.get("mean") is None:
        return "–"
    return f"{d['mean']:.3f} ± {d['sd']:.3f}"


def pct(g: float | None) -> str:
    return "–" if g is None else f"{100 * g:.0f} %"


def bootstrap(statistic: Callable[[list[int]], float | None], n: int, level: float = 0.9,
              draws: int = 4000) -> tuple[float, float] | None:
    """Percentile bootstrap over ``n`` training seeds: ``statistic`` of the indices of
    ``draws`` samples drawn with replacement (seeded, so a table prints the same interval
    every time). None if fewer than half the draws give a value."""
    rng, values = random.Random(0), []
    for _ in range(draws):
        v = statistic([rng.randrange(n) for _ in range(n)])
        if v is not None:
            values.append(v)
    if len(values) < draws // 2:
        return None
    values.sort()
    tail = (1 - level) / 2
    return values[int(tail * len(values))], values[min(len(values) - 1, int((1 - tail) * len(values)))]


def gap_interval(r: dict, level: float = 0.9, draws: int = 4000) -> tuple[float, float] | None:
    """A bootstrap interval of the gap covered over training seeds: the seeds are drawn
    with replacement (the same draw for the method, the reference and the oracle, which
    share each seed's cohort and initial weights) and the gap is recomputed from the
    drawn seeds' mean test Dice. None with fewer than 3 seeds. Seeded, so a table prints
    the same interval every time."""
    runs = r.get("runs") or {}
    rows = [(runs.get(k) or {}).get("seed_means") for k in ("method", r.get("gap_reference") or "noisy_baseline",
                                                             "oracle")]
    if any(not m for m in rows) or len({len(m) for m in rows}) != 1 or len(rows[0]) < 3:
        return None
    n = len(rows[0])

    def gap(idx: list[int]) -> float | None:
        m, low, orc = (sum(row[i] for i in idx) / n for row in rows)
        return (m - low) / (orc - low) if abs(orc - low) > 1e-6 else None

    return bootstrap(gap, n, level, draws)


def gap_cell(r: dict) -> str:
    """Gap covered, or why there is none: an oracle less than 0.02 above the reference
    leaves no gap to measure (the low noise level: labels of Dice 0.80 train about as well
    as the truth). With 3 or more training seeds, the 90 % bootstrap interval follows."""
    td = r["test_dice"]
    ref, orc = td.get(r.get("gap_reference") or "noisy_baseline"), td.get("oracle")
    if ref and orc and orc["mean"] - ref["mean"] < 0.02:
        return "– (no gap)"
    ci = gap_interval(r) if r.get("gap_covered") is not None else None
    return pct(r.get("gap_covered")) + (f" ({100 * ci[0]:.0f} … {100 * ci[1]:.0f})" if ci else "")


def setting_text(r: dict) -> str:
    s = " ".join(str(x) for x in (r.get("setting"), r.get("noise")) if x) or "default"
    if r.get("profile", "quick") != "quick":  # epochs and image size (``run.py --epochs`` changes the epochs)
        s += f", {r['profile']} profile"
        if r.get("epochs") and r.get("image_size"):
            s += f" ({r['epochs']} epochs at {r['image_size']} px)"
    if len(r.get("train_seeds") or []) > 1:
        s += f" ({len(r['train_seeds'])} seeds)"
    if r.get("seed"):  # run.py --seed: another phantom
        s += f", phantom seed {r['seed']}"
    for k, v in (r.get("phantom_sets") or {}).items():  # run.py --phantom
        s += f", phantom {k}={json.dumps(v)}"
    for k, v in {**(r.get("sets_all") or {}), **(r.get("sets") or {})}.items():  # run.py --set-all, --set
        s += f", {k}={json.dumps(v)}"
    if r.get("note"):  # set by hand, e.g. for a run of an earlier plan
        s += f", {r['note']}"
    if r.get("host_note"):  # set by hand when a file comes from another host than the table's others
        s += f", {r['host_note']}"
    return s


def spearman_cell(tri: dict) -> str:
    """The first seed's Spearman; with several seeds, their mean first."""
    if tri.get("spearman_mean") is not None:
        return f"{tri['spearman_mean']} (mean of {len(tri['spearman_seeds'])} seeds; first {tri['spearman']})"
    return str(tri.get("spearman", "–"))


def noisy_rows(results: list[dict]) -> list[str]:
    out = ["| method | setting | noisy labels (Dice) | method | noisy baseline | clean-only | oracle | gap covered | step ratio | Spearman | top-k precision (chance) |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        td, tri = r["test_dice"], r.get("triage") or {}
        nd = r.get("noisy_label_mean_dice")
        topk = f"{tri['top_k_precision']} ({tri['chance_precision']})" if "top_k_precision" in tri else "–"
        out.append(f"| {r['method']} | {setting_text(r)} | {'–' if nd is None else f'{nd:.2f}'} | {fmt(td.get('method'))} |"
                   f" {fmt(td.get('noisy_baseline'))} | {fmt(td.get('clean_only'))} | {fmt(td.get('oracle'))} |"
                   f" {gap_cell(r)} | {r['step_time']['ratio']:.2f} | {spearman_cell(tri)} | {topk} |")
        for name, d in (r.get("ablations") or {}).items():
            out.append(f"| ↳ {name} | | | {fmt(d)} | | | | | | | |")
    return out


def shape_rows(results: list[dict]) -> list[str]:
    out = ["| task | setting | stage 1: pseudo-label Dice (train) baseline / +VAE-D / +DGCC / both | U-Net / +LQSS / +IT / +wDice (test) | oracle (test) | oracle − method | LQSS accepted / rejected (Spearman) | step ratio GAN / round |",
           "|---|---|---|---|---|---|---|---|"]
    for r in results:
        e = r.get("extra") or {}
        s1 = e.get("stage1", {})
        s1s = " / ".join(f"{s1[k]['train_pseudo_label_dice']['mean']:.3f}" if k in s1 else "–"
                         for k in ("gan_baseline", "gan_vae", "gan_dgcc", "gan_vae_dgcc"))
        s2 = e.get("stage2", {})
        s2s = " / ".join(f"{s2[k]['mean']:.3f}" if s2.get(k) else "–"
                         for k in ("unet_baseline", "unet_lqss", "unet_lqss_it", "unet_lqss_it_wdice"))
        tri = e.get("triage", {})
        lq = (f"{tri['accepted']['mean']:.3f} / {tri['rejected']['mean']:.3f} ({tri.get('spearman_score_vs_round0_dice')})"
              if tri.get("accepted") else "–")
        rs = e.get("round_step", {})
        restarts = (r.get("method_config") or r.get("overrides") or {}).get("gan_starts", 1)
        threads = r.get("threads_note") or r["machine"]["threads"]
        setting = setting_text(r) + (f", {restarts} GAN restarts" if restarts > 1 else ", no restarts") + \
            f", threads {threads}"
        out.append(f"| {r['task']} | {setting} | {s1s} | {s2s} | {fmt(r['test_dice'].get('oracle'))} |"
                   f" {e.get('oracle_minus_method', '–')} | {lq} | {r['step_time']['ratio']:.1f} / {rs.get('ratio', '–')} |")
    return out


def pa_rows(results: list[dict]) -> list[str]:
    out = ["| setting | row | Dice, present test images | gap covered (supervised-only → oracle) | gap covered, same network (seg_only → seg_only_all) | absent images predicted empty |",
           "|---|---|---|---|---|---|"]
    for r in results:
        e = r.get("extra") or {}
        pres = e.get("by_presence", {})
        gaps = e.get("gap_covered_vs_clean_only", {})
        same = e.get("gap_covered_same_network", {})
        rows = {"clean_only": r["test_dice"].get("clean_only"), "oracle": r["test_dice"].get("oracle"),
                "method": r["test_dice"].get("method"), **(r.get("ablations") or {})}
        for name, d in rows.items():
            empty = pres.get(name, {}).get("absent_predicted_empty")
            out.append(f"| {setting_text(r)} | {name} | {fmt(d)} | {pct(gaps.get(name)) if name in gaps else ''} |"
                       f" {pct(same.get(name)) if name in same else ''} | {'–' if empty is None else f'{empty:.2f}'} |")
        out.append(f"| {setting_text(r)} | step ratio | {r['step_time']['ratio']:.1f} | | | |")
    return out


def tables(results_dir: Path = HERE / "results") -> str:
    res = [json.loads(p.read_text()) for p in sorted(results_dir.glob("*.json"))]
    parts = []
    noisy = [r for r in res if r["task"] == "noisy_organ"]
    shape = [r for r in res if r["task"] in ("ellipse_us", "organ_ct")]
    pa = [r for r in res if r["task"] == "lesion_pa"]
    if noisy:
        parts += ["**Noisy and scarce labels** (`noisy_organ`; test Dice on 10 test volumes)", ""] + noisy_rows(noisy) + [""]
    if shape:
        parts += ["**Shape-prior pseudo labels, no annotations** (`shape_prior_gan`)", ""] + shape_rows(shape) + [""]
    if pa:
        parts += ["**Presence/absence translation** (`presence_absence` on `lesion_pa`)", ""] + pa_rows(pa) + [""]
    return "\n".join(parts).rstrip() + "\n"


def rows(results_dir: Path = HERE / "results") -> list[str]:
    return tables(results_dir).splitlines()


if __name__ == "__main__":
    print(tables(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "results"))
