"""Learning curves of ``presence_absence`` (or any method) on the benchmark's lesion_pa cohort.

    python benchmarks/pa_probe.py 5pct 1500 300 [key=value ...] [method=supervised base=baseline]
                                  [cohort=cohort_oracle] [seed=0] [profile=full]

Needs the cohort of an earlier ``run.py --method presence_absence --task lesion_pa --setting
<SETTING> [--profile P]`` (``benchmarks/work/presence_absence_lesion_pa_<SETTING>_<P>_0/cohort``,
P = quick unless ``profile=`` is given: the profile picks the cohort and the plan's sizes). Trains
in-process for STEPS optimiser steps (the plan's settings, or the baselines' with
``base=baseline``, plus ``key=value`` overrides; no job folder, no checkpoint selection) and
every EVAL_EVERY steps prints: test Dice on present images and the share of absent images
predicted empty (test and val); for presence_absence also the unsupervised localisation of
the residual, (threshold, Dice of ``|residual| > threshold`` on present test images, area
share on absent ones), and the segmentation Dice at probability thresholds 0.05 / 0.2 / 0.5;
then the mean training losses since the last report. One thread.
"""
import json, sys, time
from pathlib import Path  # noqa: E401
import numpy as np, torch
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "AnnotationEfficientSeg"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
torch.set_num_threads(1)
from harness import PROFILES, load_plan
from aeseg.cohort.manifest import load_cohort
from aeseg.cohort.reading import read_label
from aeseg.data.dataset import load_cohort_data
from aeseg.engine.config import parse_sets, resolve_config
from aeseg.engine.device import seed_everything
from aeseg.engine.inference import predict_case
from aeseg.methods.base import MethodContext, StepInfo
from aeseg.methods.registry import get_method
from aeseg.quality.metrics import dice

setting, steps, every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
kv = parse_sets(sys.argv[4:])  # strings: resolve_config coerces them as for aeseg --set
method = kv.pop("method", "presence_absence")
cohort = kv.pop("cohort", "cohort")
base = kv.pop("base", "plan")
seed = int(kv.pop("seed", 0))
profile = kv.pop("profile", "quick")
pics = kv.pop("pics", None)  # folder: a PNG montage of 8 present + 4 absent test images per report
work = Path(__file__).resolve().parent / "work" / f"presence_absence_lesion_pa_{setting}_{profile}_0"
plan = load_plan("presence_absence", profile, "lesion_pa", setting)
values = dict(PROFILES[profile])
if base == "plan":
    values.update(plan.overrides)
else:
    values.update(plan.baseline_overrides)
values.update(kv)
cfg = resolve_config(method, values, seed=seed)
seed_everything(seed)
co = load_cohort(work / cohort)
data = load_cohort_data(co, cfg.data)
ctx = MethodContext(device=torch.device("cpu"), data=data, seed=seed, cohort=co)
m = get_method(method)(cfg.method_config, ctx)
truth = {c.case_id: c for c in load_cohort(work / "cohort").cases}
tl = {}
def evaluate():
    m.train_mode(False)
    res = {}
    for split, s in (("test", data.test), ("val", data.val)):
        pd, ae = [], []
        for rec in s.records:
            prob = predict_case(m, s, rec, cfg.data.axis, ctx.device)
            c = truth[rec.case_id]
            if c.case_id not in tl:
                tl[c.case_id] = read_label(c.truth)[0] > 0
            if c.presence == "present":
                pd.append(dice(prob > 0.5, tl[c.case_id]))
            else:
                ae.append(not np.any(prob > 0.5))
        res[split] = (round(float(np.mean(pd)), 3), round(float(np.mean(ae)), 2))
    if hasattr(m, "translate"):
        s = data.test
        pres = [r for r in s.records if truth[r.case_id].presence == "present"]
        absn = [r for r in s.records if truth[r.case_id].presence == "absent"]
        def res_of(recs):
            x = torch.cat([s.images[r.start:r.start + 1] for r in recs])
            return m.translate(x)[1].abs().amax(1).numpy()
        rp, ra = res_of(pres), res_of(absn)
        tp = np.stack([tl[r.case_id][0] for r in pres])
        out = []
        for t in (0.1, 0.2, 0.3):
            out.append((t, round(float(np.mean([dice(a > t, b) for a, b in zip(rp, tp)])), 3), round(float(np.mean(ra > t)), 4)))
        ps = np.stack([predict_case(m, s, r, cfg.data.axis, ctx.device)[0] for r in pres])
        pa = np.stack([predict_case(m, s, r, cfg.data.axis, ctx.device)[0] for r in absn])
        res["prob_thr"] = [(t, round(float(np.mean([dice(a > t, b) for a, b in zip(ps, tp)])), 3), round(float(np.mean(pa > t)), 4)) for t in (0.05, 0.2, 0.5)]
        res["resid(thr,presDice,absArea)"] = out + [("mean|r| P/A", round(float(rp.mean()), 3), round(float(ra.mean()), 3))]
        if pics:
            save_montage(s, pres[:8] + absn[:4], ps[:8].tolist() + pa[:4].tolist())
    m.train_mode(True)
    return res
def save_montage(s, recs, probs):
    """Rows: image, absence image, |residual| (×2), segmentation probability, truth."""
    from PIL import Image
    x = torch.cat([s.images[r.start:r.start + 1] for r in recs])
    ab, re = m.translate(x)
    rows = [x[:, 0].numpy() * 0.5 + 0.5, ab[:, 0].numpy() * 0.5 + 0.5, np.clip(re.abs().amax(1).numpy() * 2, 0, 1),
            np.stack([np.asarray(p) for p in probs]), np.stack([tl[r.case_id][0] for r in recs]).astype(float)]
    grid = np.concatenate([np.concatenate(list(r), 1) for r in rows], 0)
    Path(pics).mkdir(parents=True, exist_ok=True)
    im = Image.fromarray((np.clip(grid, 0, 1) * 255).astype(np.uint8))
    im.resize((im.width * 2, im.height * 2), 0).save(Path(pics) / f"step{step_no:05d}.png")
step_no = 0
phases = m.phases(cfg.engine.epochs)
ph = phases[0]
m.begin_phase(ph)
idx = m.train_indices(ph)
g = torch.Generator().manual_seed(seed)
bs = cfg.engine.batch_size
order = idx[torch.randperm(len(idx), generator=g)]
pos = 0
t0 = time.time()
acc = {}
print(json.dumps(kv), method, flush=True)
for i in range(steps):
    if pos + bs > len(order):
        order = idx[torch.randperm(len(idx), generator=g)]; pos = 0
    sel = order[pos:pos + bs]; pos += bs
    batch = m.make_batch(sel, ph)
    out = m.train_step(batch, StepInfo(ph.name, i // 10, steps // 10, i % 10, 10, i))
    for k, v in out.items():
        acc.setdefault(k, []).append(v)
    if (i + 1) % every == 0:
        step_no = i + 1
        r = evaluate()
        ls = " ".join(f"{k}={np.mean(v):.3f}" for k, v in acc.items())
        acc = {}
        print(f"step {i+1} {time.time()-t0:.0f}s test(present dice, absent empty)={r['test']} val={r['val']} {r.get('resid(thr,presDice,absArea)','')} prob={r.get('prob_thr','')} | {ls}", flush=True)
