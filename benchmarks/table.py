"""Print the README's benchmark table from ``benchmarks/results/*.json``.

``python benchmarks/table.py`` prints Markdown: one row per result file with the test
Dice (mean ± sd over test cases) of the method and the baselines, the gap covered, the
step-time ratio, and the label-quality triage.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def fmt(d: dict | None) -> str:
    if not d or d.get("mean") is None:
        return "–"
    return f"{d['mean']:.3f} ± {d['sd']:.3f}"


def rows(results_dir: Path = HERE / "results") -> list[str]:
    out = ["| method | task | setting | noisy labels (Dice) | method | noisy baseline | clean-only | oracle | gap covered | step ratio | Spearman | top-k precision | wall (s) |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in sorted(results_dir.glob("*.json")):
        r = json.loads(p.read_text())
        td = r["test_dice"]
        tri = r.get("triage") or {}
        setting = " ".join(str(x) for x in (r.get("setting"), r.get("noise")) if x) or "default"
        if len(r.get("train_seeds") or []) > 1:
            setting += f" ({len(r['train_seeds'])} seeds)"
        nd = r.get("noisy_label_mean_dice")
        gap = r.get("gap_covered")
        out.append(f"| {r['method']} | {r['task']} | {setting} | {nd:.2f} |" if nd is not None else f"| {r['method']} | {r['task']} | {setting} | – |")
        out[-1] += (f" {fmt(td.get('method'))} | {fmt(td.get('noisy_baseline'))} | {fmt(td.get('clean_only'))} | {fmt(td.get('oracle'))} |"
                    f" {'–' if gap is None else f'{100 * gap:.0f} %'} | {r['step_time']['ratio']:.2f} |"
                    f" {tri.get('spearman', '–')} | {tri.get('top_k_precision', '–')} | {r.get('wall_s', '–')} |")
        for name, d in (r.get("ablations") or {}).items():
            out.append(f"| ↳ {name} | | | | {fmt(d)} | | | | | | | | |")
    return out


if __name__ == "__main__":
    print("\n".join(rows(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "results")))
