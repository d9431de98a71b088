"""Benchmark harness: phantom cohort → baselines and a method → one JSON of results.

For a task (``benchmarks.md``), the harness builds the seeded phantom cohort, then runs
in the same process and on the same machine:

- the **noisy baseline** (``supervised``, ``labels=all``: every label as if clean),
- the **clean-only** baseline (``supervised`` on the clean labels),
- the **oracle** (``supervised`` on the true labels of every training case),
- the **method** (with its plan's settings) and its **ablation** rows,

evaluates every run's test-case predictions against the true labels (Dice, mean ± sd
over cases), and adds ``gap_covered`` = (method − noisy) / (oracle − noisy), the
step-time ratio method ÷ supervised (same batch, same process), and label-quality
triage (Spearman correlation of the method's per-case ``score`` with the true Dice of
the case's training label; precision of the top-k flags).

In the ``semi`` and ``mixed`` settings the clean-only run is also the task
standardization: its predictions become the noisy labels of the unlabelled training
cases in a derived cohort (a ``cohort.csv`` pointing at the original images), on which
the noisy baseline, the oracle's counterpart and the method then run.

A method adds its specifics in ``benchmarks/plans/<method>.py`` with a function
``plan(profile: str, task: str, setting: str | None) -> Plan``.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "AnnotationEfficientSeg"))

from aeseg.cohort.manifest import load_cohort  # noqa: E402
from aeseg.cohort.reading import read_label  # noqa: E402
from aeseg.data.phantoms import PhantomConfig, make_phantom_cohort  # noqa: E402
from aeseg.engine.config import resolve_config  # noqa: E402
from aeseg.engine.loop import create_job, run_job  # noqa: E402
from aeseg.quality.metrics import dice  # noqa: E402
from aeseg.quality.table import read_quality_csv  # noqa: E402

# Settings every run of a profile shares (flat keys as in ``aeseg train --set``). Every run
# gets the same number of optimiser steps (epochs × steps_per_epoch), whatever the size of
# the labelled set it learns from, so that baselines are not starved of updates.
PROFILES: dict[str, dict[str, Any]] = {
    "quick": {"engine.epochs": 30, "engine.steps_per_epoch": 10, "engine.batch_size": 16, "data.size": 64,
              "engine.probability_maps": False},
    # the quick profile's images and batches, 3.3× the steps: for methods whose effect needs
    # the networks to start memorising noisy labels (run by hand, about 3× the quick time)
    "long": {"engine.epochs": 100, "engine.steps_per_epoch": 10, "engine.batch_size": 16, "data.size": 64,
             "engine.probability_maps": False},
    "full": {"engine.epochs": 100, "engine.steps_per_epoch": 20, "engine.batch_size": 16, "data.size": 96,
             "engine.probability_maps": False},
}
JOB_REF = "@job:"  # an override value "@job:<row>": that row's job folder for the same training seed

PHANTOM_PROFILES: dict[str, dict[str, Any]] = {"quick": {"size": 64}, "long": {"size": 64}, "full": {"size": 96}}


@dataclass
class Variant:
    """One run: a name, a method and its setting overrides."""

    name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    method: str | None = None  # default: the benchmarked method
    cohort: Literal["method", "oracle"] = "method"  # "oracle": every training case with its true label


@dataclass
class Plan:
    overrides: dict[str, Any] = field(default_factory=dict)  # the method's main run
    ablations: list[Variant] = field(default_factory=list)
    baselines: tuple[str, ...] = ("noisy_baseline", "clean_only", "oracle")
    baseline_overrides: dict[str, Any] = field(default_factory=dict)  # e.g. the method's image size
    gap_reference: str = "noisy_baseline"  # the lower end of "gap covered"
    phantom: dict[str, Any] = field(default_factory=dict)  # PhantomConfig overrides
    timing_phase: int = 0  # which of the method's phases to time
    extra: Callable[["Bench", dict], dict] | None = None  # method-specific measurements


@dataclass
class RunResult:
    name: str
    method: str
    job: Path
    test_dice: dict[str, float]
    per_case: dict[str, float]
    best_val_dice: float | None
    wall_s: float
    epochs: int
    reused: bool = False  # a finished job of an earlier invocation with the same cohort and config
    seed_means: list[float] | None = None  # test Dice per training seed (several seeds only)

    def to_dict(self) -> dict:
        d = {"method": self.method, "test_dice": self.test_dice, "best_val_dice": self.best_val_dice,
             "wall_s": round(self.wall_s, 1), "epochs": self.epochs, "job": str(self.job), "reused": self.reused}
        if self.seed_means:
            d["seed_means"] = [round(m, 4) for m in self.seed_means]
        return d


def load_plan(method: str, profile: str, task: str, setting: str | None) -> Plan:
    path = HERE / "plans" / f"{method}.py"
    if not path.is_file():
        return Plan()
    spec = importlib.util.spec_from_file_location(f"plan_{method}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod.plan(profile, task, setting)


def mean_sd(values: list[float]) -> dict[str, float]:
    v = [x for x in values if x is not None and np.isfinite(x)]
    if not v:
        return {"mean": float("nan"), "sd": float("nan"), "n": 0}
    return {"mean": round(float(np.mean(v)), 4), "sd": round(float(np.std(v)), 4), "n": len(v)}


class Bench:
    def __init__(self, method: str, task: str, profile: str = "quick", setting: str | None = None,
                 noise: str | float | None = None, seed: int = 0, workdir: Path | None = None, reuse: bool = False,
                 train_seeds: tuple[int, ...] | None = None, jobs: int = 1):
        self.method, self.task, self.profile, self.setting, self.noise, self.seed = method, task, profile, setting, noise, seed
        self.reuse = reuse  # keep a finished run whose job.json matches (cohort and config)
        self.train_seeds: tuple[int, ...] = tuple(train_seeds or (seed,))  # the phantom always uses ``seed``
        tag = "_".join(str(x) for x in (task, setting, noise, profile, seed) if x is not None)
        # absolute: symbolic links made under it (a derived cohort's ``truth``) must not
        # resolve against their own folder
        self.workdir = Path(workdir or HERE / "work").absolute() / f"{method}_{tag}"
        self.plan = load_plan(method, profile, task, setting)
        self.phantom_info = None
        self.cohort_dir: Path | None = None  # what the method trains on
        self.runs: dict[str, RunResult] = {}
        self.jobs = max(1, int(jobs))  # training processes run side by side by ``prefetch``
        self._fresh: set[Path] = set()  # jobs this invocation trained in ``prefetch``

    # cohorts -------------------------------------------------------------------------
    def build_cohort(self) -> Path:
        root = self.workdir / "cohort"
        kw = self._phantom_kwargs()
        cfg = PhantomConfig(task=self.task, seed=self.seed, **kw)
        if self.reuse and (root / "phantom.json").is_file():
            record = json.loads((root / "phantom.json").read_text())
            if _same_phantom(record.get("config") or {}, json.loads(json.dumps(dataclasses.asdict(cfg.resolved()), default=_json))):
                self.phantom_info = _RecordedPhantom(record)
                self.cohort_dir = root
                print("  reusing the phantom cohort (same configuration)", flush=True)
                return root
        if root.exists():
            import shutil

            shutil.rmtree(self.workdir)
        self.phantom_info = make_phantom_cohort(root, cfg)
        self.cohort_dir = root
        return root

    def _phantom_kwargs(self) -> dict[str, Any]:
        kw = dict(PHANTOM_PROFILES[self.profile])
        if self.task == "noisy_organ":
            kw["setting"] = self.setting or "noisy"
            if (self.setting or "noisy") != "semi":
                kw["noise"] = self.noise if self.noise is not None else "mid"
        kw.update(self.plan.phantom)
        return kw

    def derived_cohort(self, name: str, label_for: Callable[[Any], tuple[str, str] | None]) -> Path:
        """A cohort.csv in ``workdir/name`` over the original images; ``label_for(case)`` gives
        (label path, label kind) or None to keep the case's own label."""
        src = load_cohort(self.workdir / "cohort")
        dst = self.workdir / name
        dst.mkdir(parents=True, exist_ok=True)
        with open(dst / "cohort.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["case", "image", "label", "label_kind", "presence", "domain", "split", "label_value"])
            for c in src.cases:
                lab = label_for(c)
                path, kind = lab if lab else ((str(c.label) if c.label else ""), c.label_kind)
                lv = "" if lab else (c.label_value if c.label_value is not None else "")  # "": any non-zero
                w.writerow([c.case_id, c.image, path, kind, c.presence or "", c.domain or "", c.split, lv])
        truth = dst / "truth"
        if truth.is_symlink() and not truth.exists():  # dangling, e.g. made by an older version
            truth.unlink()
        if not truth.exists():
            truth.symlink_to(self.workdir / "cohort" / "truth", target_is_directory=True)
        return dst

    def oracle_cohort(self) -> Path:
        def lab(c):
            return (str(c.truth), "clean") if c.split == "train" and c.truth else None
        return self.derived_cohort("cohort_oracle", lab)

    def standardized_cohort(self, clean_run: RunResult) -> Path:
        """Unlabelled training cases get the clean-only model's predictions as noisy labels."""
        def lab(c):
            if c.split == "train" and c.label_kind == "none":
                return str(clean_run.job / "pseudo_labels" / f"{c.case_id}.seg.nrrd"), "noisy"
            return None
        return self.derived_cohort("cohort_standardized", lab)

    def ablation_rows(self, which: bool | tuple[str, ...] | None, method_cohort: Path
                      ) -> list[tuple[str, str, dict[str, Any], Path]]:
        """(row name, method, overrides, cohort) of the plan's ablation rows: all (True),
        none (False) or those named; a row whose ``cohort`` is "oracle" trains on the
        oracle cohort, the others on the method's."""
        if which is True:
            chosen = list(self.plan.ablations)
        elif not which:
            chosen = []
        else:
            names = {v.name for v in self.plan.ablations}
            unknown = sorted(set(which) - names)
            if unknown:
                raise SystemExit(f"no ablation row {', '.join(unknown)} in the {self.method} plan "
                                 f"(it has: {', '.join(sorted(names)) or 'none'})")
            chosen = [v for v in self.plan.ablations if v.name in which]
        return [(f"ablation_{v.name}", v.method or self.method, v.overrides,
                 self.oracle_cohort() if v.cohort == "oracle" else method_cohort) for v in chosen]

    # runs ----------------------------------------------------------------------------
    def run(self, name: str, method: str, overrides: dict[str, Any] | None = None, cohort: Path | None = None) -> RunResult:
        """Train ``method`` once per training seed (same cohort) and pool the results: the
        test Dice of a case is its mean over seeds; ``seed_means`` keeps each seed's mean.
        The first seed's job (``jobs/<name>``) is the one plans and triage read."""
        singles = [self._run_seed(self.job_name(name, s), method, overrides, cohort, s) for s in self.train_seeds]
        first = singles[0]
        if len(singles) == 1:
            rr = first
        else:
            per_case = {c: float(np.mean([r.per_case[c] for r in singles])) for c in first.per_case}
            vals = [r.best_val_dice for r in singles if r.best_val_dice is not None]
            rr = RunResult(name, method, first.job, mean_sd(list(per_case.values())), per_case,
                           float(np.mean(vals)) if vals else None, sum(r.wall_s for r in singles), first.epochs,
                           reused=all(r.reused for r in singles),
                           seed_means=[r.test_dice["mean"] for r in singles])
            print(f"  {name:<28} test Dice {rr.test_dice['mean']:.3f} (seeds {', '.join(f'{m:.3f}' for m in rr.seed_means)})",
                  flush=True)
        self.runs[name] = rr
        return rr

    def job_name(self, name: str, seed: int) -> str:
        """The job folder name of row ``name`` for training seed ``seed``."""
        return name if seed == self.train_seeds[0] else f"{name}_s{seed}"

    def _values(self, overrides: dict[str, Any] | None, seed: int) -> dict[str, Any]:
        """Profile settings plus ``overrides``; a value ``"@job:<row>"`` becomes the job folder
        of row ``<row>`` trained with the same seed (e.g. a stage reused from the main run)."""
        values = dict(PROFILES[self.profile])
        values.update(overrides or {})
        for k, v in values.items():
            if isinstance(v, str) and v.startswith(JOB_REF):
                values[k] = str(self.workdir / "jobs" / self.job_name(v[len(JOB_REF):], seed))
        return values

    def prefetch(self, rows: list[tuple[str, str, dict[str, Any] | None, Path | None]]) -> None:
        """Train the jobs of ``rows`` (name, method, overrides, cohort; every training seed)
        in ``self.jobs`` processes side by side; the later :meth:`run` of the same row picks
        its jobs up as finished. Nothing happens with ``jobs`` = 1 (``run`` trains in process).
        Rows are started in the order given: put the longest first."""
        if self.jobs <= 1:
            return
        from concurrent.futures import as_completed

        tasks = []
        for name, method, overrides, cohort in rows:
            for s in self.train_seeds:
                job_dir = self.workdir / "jobs" / self.job_name(name, s)
                values, co = self._values(overrides, s), Path(cohort or self.cohort_dir)
                if job_dir in self._fresh or (self.reuse and _finished(job_dir, method, co, resolve_config(
                        method, values, seed=s)) is not None):
                    continue
                tasks.append((job_dir, co, method, values, s, self.reuse))
        if not tasks:
            return
        print(f"  training {len(tasks)} jobs, {self.jobs} at a time ...", flush=True)
        with worker_pool(self.jobs) as ex:
            futures = {ex.submit(_train_job, *t): t[0] for t in tasks}
            for f in as_completed(futures):
                wall = f.result()[0]  # a failed job raises here, as it would in process
                self._fresh.add(futures[f])
                print(f"    {futures[f].name:<26} trained ({wall:.0f} s)", flush=True)

    def _run_seed(self, name: str, method: str, overrides: dict[str, Any] | None, cohort: Path | None,
                  seed: int) -> RunResult:
        values = self._values(overrides, seed)
        cfg = resolve_config(method, values, seed=seed, device="auto")
        job_dir = self.workdir / "jobs" / name
        cohort = Path(cohort or self.cohort_dir)
        fresh = job_dir in self._fresh
        done = _finished(job_dir, method, cohort, cfg) if self.reuse or fresh else None
        if done is not None:
            per_case = self.test_dice(job_dir)
            rr = RunResult(name, method, job_dir, mean_sd(list(per_case.values())), per_case, done["best_val_dice"],
                           done["wall_s"], done["epochs"], reused=not fresh)
            how = f"{done['wall_s']:.0f} s, in parallel" if fresh else "reused"
            print(f"  {name:<28} test Dice {rr.test_dice['mean']:.3f} ± {rr.test_dice['sd']:.3f}  ({how})", flush=True)
            return rr
        wall, best, epochs = _train_job(job_dir, cohort, method, values, seed, self.reuse)
        per_case = self.test_dice(job_dir)
        rr = RunResult(name, method, job_dir, mean_sd(list(per_case.values())), per_case, best, wall, epochs)
        print(f"  {name:<28} test Dice {rr.test_dice['mean']:.3f} ± {rr.test_dice['sd']:.3f}  ({wall:.0f} s)", flush=True)
        return rr

    def test_dice(self, job: Path, sub: str = "pseudo_labels") -> dict[str, float]:
        co = load_cohort(self.workdir / "cohort")
        out = {}
        for c in co.cases:
            if c.split != "test" or c.truth is None:
                continue
            if self.task == "lesion_pa" and c.presence != "present":
                continue  # Dice of a lesion is defined on images that have one (absent cases: see the plan)
            pred, _ = read_label(job / sub / f"{c.case_id}.seg.nrrd")
            truth, _ = read_label(c.truth)
            out[c.case_id] = dice(pred > 0, truth > 0)
        return out

    # measurements --------------------------------------------------------------------
    def triage(self, run: RunResult, cohort: Path | None = None) -> dict[str, Any]:
        """Spearman(score, true Dice of the training label) and top-k flag precision, over
        training cases whose label is not clean, for the first training seed's job; with
        several seeds also every seed's Spearman (``spearman_seeds``) and their mean."""
        out = self.triage_job(run.job, cohort)
        if len(self.train_seeds) > 1 and "spearman" in out:
            seeds = [self.triage_job(run.job.parent / self.job_name(run.name, s), cohort).get("spearman")
                     for s in self.train_seeds]
            known = [v for v in seeds if v is not None]
            out["spearman_seeds"] = seeds
            out["spearman_mean"] = round(float(np.mean(known)), 4) if known else None
        return out

    def triage_job(self, job: Path, cohort: Path | None = None) -> dict[str, Any]:
        """:meth:`triage` of one job folder (``{"n": 0}`` if it has no quality.csv)."""
        from scipy.stats import spearmanr

        if not (job / "quality.csv").is_file():
            return {"n": 0}
        co = load_cohort(cohort or self.cohort_dir)
        rows = {r["case"]: r for r in read_quality_csv(job / "quality.csv")}
        scores, truths, flags, ids = [], [], [], []
        for c in co.cases:
            if c.split != "train" or c.label_kind != "noisy" or c.case_id not in rows or c.truth is None:
                continue
            lab, _ = read_label(c.label, c.label_value)
            tr, _ = read_label(c.truth)
            scores.append(rows[c.case_id]["score"])
            truths.append(dice(lab > 0, tr > 0))
            flags.append(rows[c.case_id]["flag"])
            ids.append(c.case_id)
        if len(scores) < 3:
            return {"n": len(scores)}
        rho = spearmanr(scores, truths).statistic
        k = max(1, sum(flags))
        worst = set(np.asarray(ids)[np.argsort(truths)[:k]])
        flagged = {i for i, f in zip(ids, flags) if f}
        return {"n": len(scores), "spearman": round(float(rho), 4), "k": k,
                "top_k_precision": round(len(worst & flagged) / k, 4),
                "chance_precision": round(k / len(scores), 4)}

    def step_times(self, method: str, overrides: dict[str, Any], n: int = 12, phase_index: int = 0,
                   cohort: Path | None = None) -> float:
        """Median seconds of one training step (same batch size, after warm-up), in process."""
        import torch

        from aeseg.cohort.summary import summarize  # noqa: F401
        from aeseg.data.dataset import load_cohort_data
        from aeseg.engine.device import pick_device, seed_everything
        from aeseg.methods.base import MethodContext, StepInfo
        from aeseg.methods.registry import get_method

        values = dict(PROFILES[self.profile])
        values.update(overrides)
        cfg = resolve_config(method, values, seed=self.seed)
        seed_everything(self.seed)
        co = load_cohort(cohort or self.cohort_dir)
        data = load_cohort_data(co, cfg.data)
        ctx = MethodContext(device=pick_device("auto"), data=data, seed=self.seed, cohort=co)
        m = get_method(method)(cfg.method_config, ctx)
        phases = m.phases(cfg.engine.epochs)
        ph = phases[min(phase_index, len(phases) - 1)]
        m.begin_phase(ph)
        idx = m.train_indices(ph)
        g = torch.Generator().manual_seed(0)
        times = []
        for i in range(n + 3):
            sel = idx[torch.randperm(len(idx), generator=g)[: cfg.engine.batch_size]]
            batch = {k: (v.to(ctx.device) if torch.is_tensor(v) else v) for k, v in m.make_batch(sel, ph).items()}
            t0 = time.perf_counter()
            m.train_step(batch, StepInfo(ph.name, 5, ph.epochs, i, 10, i))
            if i >= 3:
                times.append(time.perf_counter() - t0)
        return float(statistics.median(times))

    def reference_cohort(self, cohort: Path | None = None) -> Path:
        """The cohort the supervised reference step is timed on: ``cohort`` itself, or the
        oracle cohort (same images, true labels) when it has no labelled training case
        (``ellipse_us``, ``organ_ct``): a supervised step there has nothing to learn from
        and returns at once, which would make any ratio meaningless."""
        path = cohort or self.cohort_dir
        co = load_cohort(path)
        if any(c.split == "train" and c.label_kind in ("clean", "noisy") for c in co.cases):
            return path
        return self.oracle_cohort()

    def step_ratio(self, overrides: dict[str, Any], cohort: Path | None = None) -> dict[str, float]:
        # same batch: the supervised step gets the method's image size and batch size
        same = {k: v for k, v in overrides.items() if k.startswith(("data.", "engine."))}
        same.update(self.plan.baseline_overrides)  # and what the baselines share (run.py --set-all)
        ref = self.reference_cohort(cohort)
        t_sup = self.step_times("supervised", {"labels": "all", **same}, cohort=ref)
        t_m = self.step_times(self.method, overrides, phase_index=self.plan.timing_phase, cohort=cohort)
        t_sup2 = self.step_times("supervised", {"labels": "all", **same}, cohort=ref)  # bracket the method: drift check
        sup = (t_sup + t_sup2) / 2
        return {"method_s": round(t_m, 4), "supervised_s": round(sup, 4), "ratio": round(t_m / sup, 3)}


def _same_phantom(recorded: dict, current: dict) -> bool:
    """A recorded phantom configuration equals the current one; a setting added to
    PhantomConfig after the cohort was built matches when it is unset (None), so older
    cohorts stay reusable."""
    return recorded == {k: v for k, v in current.items() if k in recorded or v is not None}


class _RecordedPhantom:
    """The ``phantom.json`` of a reused cohort, with PhantomInfo's fields the harness reads."""

    def __init__(self, record: dict):
        self.record = record
        self.noisy_mean_dice = record.get("noisy_mean_dice")

    def to_dict(self) -> dict:
        return dict(self.record)


def _same_job(job_dir: Path, method: str, cohort: Path, cfg) -> list[dict] | None:
    """The events of the job in ``job_dir`` if it runs ``method`` on ``cohort`` with the same
    configuration and seed, else None."""
    try:
        meta = json.loads((job_dir / "job.json").read_text())
        events = [json.loads(line) for line in (job_dir / "events.jsonl").read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError):
        return None
    def comparable(config: dict) -> dict:  # engine.threads counts: CPU results differ by thread count
        return json.loads(json.dumps(config, default=_json))

    if meta.get("method") != method or Path(meta.get("cohort", "")).resolve() != cohort.resolve():
        return None
    stored, want = comparable(meta.get("config", {})), comparable(cfg.to_dict())
    defaults = comparable(resolve_config(method, {}).to_dict())
    for section, values in want.items():  # a field added since the job ran matches at its default value
        for key in [k for k in values if k not in stored.get(section, {})]:
            if values[key] == defaults.get(section, {}).get(key, object()):
                del values[key]
    if meta.get("seed") != cfg.seed or stored != want:
        return None
    return events


def _finished(job_dir: Path, method: str, cohort: Path, cfg) -> dict | None:
    """The ``done`` event of a finished job in ``job_dir`` if it ran ``method`` on ``cohort``
    with the same configuration, else None."""
    events = _same_job(job_dir, method, cohort, cfg)
    if events is None:
        return None
    done = [e for e in events if e.get("type") == "done"]
    if not done or not (job_dir / "pseudo_labels").is_dir():
        return None
    epochs = sum(1 for e in events if e.get("type") == "epoch")
    return {"best_val_dice": done[-1].get("best_val_dice"), "wall_s": float(done[-1].get("wall_s") or 0.0), "epochs": epochs}


_IDLE = threading.Event()  # set while a worker of Bench.prefetch runs no job
_IDLE.set()


@contextmanager
def job_running():
    """Marks a worker as running a job, for :func:`watch_parent`."""
    _IDLE.clear()
    try:
        yield
    finally:
        _IDLE.set()


def watch_parent(parent: int, poll_s: float = 1.0, grace_s: float = 600.0) -> None:
    """Initializer of :meth:`Bench.prefetch`'s workers. Once the harness process ``parent``
    is gone (stopped with SIGTERM or SIGKILL, which do not reach its workers), the worker
    sends itself SIGTERM, which the engine turns into a checkpoint and a ``cancelled``
    event, waits (at most ``grace_s``) until that job has returned, and exits: an idle
    worker of a dead pool would otherwise wait for tasks forever. Without it an orphaned
    worker trains on and writes to a job folder that a rerun with ``--reuse`` resumes at
    the same time."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGTERM)
        _IDLE.wait(grace_s)
        os._exit(1)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


def worker_pool(jobs: int):
    """The process pool of :meth:`Bench.prefetch`: ``jobs`` spawned workers, each watching
    the harness process (:func:`watch_parent`)."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    return ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=watch_parent,
                               initargs=(os.getpid(),))


def _train_job(job_dir: Path, cohort: Path, method: str, values: dict[str, Any],
               seed: int, resume: bool = False) -> tuple[float, float | None, int]:
    """One training job (in process, or in a worker of :meth:`Bench.prefetch`): (wall time
    in s, best validation Dice, epochs run). Fresh, unless ``resume`` and ``job_dir`` holds
    the same job stopped before its end (the process killed, the machine restarted) with a
    checkpoint: it then goes on from there, as ``aeseg train --resume`` does, and the wall
    time counts the resumed part only."""
    import shutil

    cfg = resolve_config(method, values, seed=seed, device="auto")
    if resume and (job_dir / "checkpoints" / "last.pt").is_file() and (events := _same_job(job_dir, method, cohort, cfg)) \
            and not any(e.get("type") == "done" for e in events):
        t0 = time.time()
        with job_running():
            res = run_job(job_dir, resume=True, progress_bar=False)
        return time.time() - t0, res.best_val_dice, res.epochs_run
    if job_dir.exists():
        shutil.rmtree(job_dir)
    t0 = time.time()
    job = create_job(job_dir, cohort, cfg, command=["benchmarks/run.py", job_dir.name])
    with job_running():
        res = run_job(job.root, progress_bar=False)
    return time.time() - t0, res.best_val_dice, res.epochs_run


def machine() -> dict[str, Any]:
    import torch

    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=False).stdout.strip()
    except OSError:
        commit = ""
    return {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "cuda": torch.cuda.is_available(), "commit": commit}


def gap(method: float, low: float, oracle: float) -> float | None:
    d = oracle - low
    return round((method - low) / d, 4) if abs(d) > 1e-6 else None


def apply_sets(plan: Plan, method: str, sets: dict[str, Any]) -> None:
    """Extra settings (``run.py --set``) on the plan's method run and on every ablation row
    of the same method; baselines keep theirs."""
    plan.overrides.update(sets)
    for v in plan.ablations:
        if v.method in (None, method):
            v.overrides.update(sets)


def apply_sets_all(plan: Plan, sets: dict[str, Any]) -> None:
    """``run.py --set-all``: settings for every row, baselines included (e.g. a training
    augmentation that the comparison must share)."""
    plan.overrides.update(sets)
    for v in plan.ablations:
        v.overrides.update(sets)
    plan.baseline_overrides.update(sets)


def apply_phantom(plan: Plan, phantom: dict[str, Any]) -> None:
    """``run.py --phantom``: phantom settings on top of the plan's (e.g. ``n_clean=4`` in the
    semi setting, where the plan asks for 1); every row trains on that cohort."""
    plan.phantom = {**plan.phantom, **phantom}


def apply_epochs(plan: Plan, epochs: int) -> None:
    """``run.py --epochs``: every row — the method, its ablations (whatever their method)
    and the baselines — trains ``epochs`` epochs, so that a longer run stays a fair one."""
    plan.overrides["engine.epochs"] = epochs
    plan.baseline_overrides["engine.epochs"] = epochs
    for v in plan.ablations:
        v.overrides["engine.epochs"] = epochs


def run_benchmark(method: str, task: str, profile: str = "quick", setting: str | None = None,
                  noise: str | float | None = None, seed: int = 0, ablations: bool | tuple[str, ...] = True,
                  out_dir: Path | None = None, reuse: bool = False, train_seeds: tuple[int, ...] | None = None,
                  jobs: int = 1, sets: dict[str, Any] | None = None, epochs: int | None = None,
                  workdir: Path | None = None, sets_all: dict[str, Any] | None = None,
                  phantom: dict[str, Any] | None = None) -> dict[str, Any]:
    t0 = time.time()
    b = Bench(method, task, profile, setting, noise, seed, workdir=workdir, reuse=reuse, train_seeds=train_seeds, jobs=jobs)
    apply_phantom(b.plan, phantom or {})
    apply_sets(b.plan, method, sets or {})
    apply_sets_all(b.plan, sets_all or {})
    if epochs:
        apply_epochs(b.plan, epochs)
    print(f"[{method} on {task} {setting or ''} {noise or ''} profile={profile}] building the phantom cohort", flush=True)
    b.build_cohort()
    plan = b.plan
    train_cohort = b.cohort_dir
    runs: dict[str, RunResult] = {}
    semi = task == "noisy_organ" and (setting or "noisy") in ("semi", "mixed")
    clean_row = ("clean_only", "supervised", {"labels": "clean", **plan.baseline_overrides}, None)
    oracle_row = (("oracle", "supervised", {"labels": "clean", **plan.baseline_overrides}, b.oracle_cohort())
                  if "oracle" in plan.baselines else None)
    if semi:  # the standardized cohort needs the clean-only run first
        b.prefetch([r for r in (clean_row, oracle_row) if r])
        runs["clean_only"] = b.run(*clean_row[:3])
        train_cohort = b.standardized_cohort(runs["clean_only"])
        b.cohort_dir = train_cohort
    rows = []  # what trains on the method's cohort (longest first), then the baselines
    if method != "supervised" or plan.overrides:
        rows.append(("method", method, plan.overrides, train_cohort))
    ablation_rows = b.ablation_rows(ablations, train_cohort)
    rows += ablation_rows
    if "noisy_baseline" in plan.baselines:
        rows.append(("noisy_baseline", "supervised", {"labels": "all", **plan.baseline_overrides}, train_cohort))
    if not semi:
        rows += [r for r in (clean_row, oracle_row) if r and r[0] in plan.baselines]
    b.prefetch(rows)
    if "clean_only" in plan.baselines and not semi:
        runs["clean_only"] = b.run(*clean_row[:3])
    if "noisy_baseline" in plan.baselines:
        runs["noisy_baseline"] = b.run("noisy_baseline", "supervised", {"labels": "all", **plan.baseline_overrides},
                                       cohort=train_cohort)
    if "oracle" in plan.baselines:
        runs["oracle"] = b.run(*oracle_row)
    if method != "supervised" or plan.overrides:
        runs["method"] = b.run("method", method, plan.overrides, cohort=train_cohort)
    else:
        runs["method"] = runs["clean_only"]
    abl_runs = {row[0].removeprefix("ablation_"): b.run(*row) for row in ablation_rows}
    abl = {k: r.test_dice for k, r in abl_runs.items()}
    ref = runs.get(plan.gap_reference)
    result: dict[str, Any] = {
        "method": method, "task": task, "setting": setting, "noise": noise, "profile": profile, "seed": seed,
        "train_seeds": list(b.train_seeds),
        "phantom": b.phantom_info.to_dict() if b.phantom_info else None,
        "noisy_label_mean_dice": getattr(b.phantom_info, "noisy_mean_dice", None),
        "test_dice": {k: r.test_dice for k, r in runs.items()},
        "gap_reference": plan.gap_reference,
        "gap_covered": gap(runs["method"].test_dice["mean"], ref.test_dice["mean"], runs["oracle"].test_dice["mean"])
        if ref and "oracle" in runs else None,
        "ablations": abl,
        "overrides": dict(plan.overrides),  # the method's settings on top of the profile
        "sets": dict(sets or {}),  # run.py --set: settings beyond the plan's (in overrides too)
        "sets_all": dict(sets_all or {}),  # run.py --set-all: on every row, baselines included
        "phantom_sets": dict(phantom or {}),  # run.py --phantom: phantom settings beyond the plan's
        "method_config": json.loads((runs["method"].job / "job.json").read_text())["config"]["method"],
        "runs": {k: r.to_dict() for k, r in runs.items()},
        "ablation_runs": {k: r.to_dict() for k, r in abl_runs.items()},  # per seed, as ``runs``
    }
    print("  timing steps ...", flush=True)
    result["step_time"] = b.step_ratio(plan.overrides, cohort=train_cohort)
    if runs["method"].job.exists() and (runs["method"].job / "quality.csv").exists():
        result["triage"] = b.triage(runs["method"], cohort=train_cohort)
    if plan.extra:
        result["extra"] = plan.extra(b, result)
    cfg = resolve_config(method, {**PROFILES[profile], **plan.overrides})
    result.update({"machine": machine(), "image_size": cfg.data.size, "epochs": cfg.engine.epochs,
                   "batch_size": cfg.engine.batch_size, "wall_s": round(time.time() - t0, 1),
                   "date": time.strftime("%Y-%m-%d", time.gmtime())})
    out_dir = Path(out_dir or HERE / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = [method, task] + [str(x) for x in (setting, noise) if x is not None]
    if profile != "quick":
        parts.append(profile)
    if epochs:
        parts.append(f"{epochs}epochs")
    if len(b.train_seeds) > 1:
        parts.append(f"{len(b.train_seeds)}seeds")
    parts += [f"{k}{v}".replace(".", "p").lower() for k, v in sorted({**(phantom or {}), **(sets_all or {}), **(sets or {})}.items())]
    path = out_dir / ("_".join(parts) + ".json")
    path.write_text(json.dumps(result, indent=2, default=_json) + "\n")
    print(summary_line(result))
    print(f"  wrote {path}")
    from figures import draw  # the JSON is on disk first: a figure that fails loses nothing

    print(f"  drew {draw(json.loads(path.read_text()), path.with_suffix('.png'))}")
    return result


def _json(o):
    if isinstance(o, Path):
        return str(o)
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(type(o).__name__)


def summary_line(r: dict) -> str:
    td = r["test_dice"]
    parts = [f"{k} {v['mean']:.3f}" for k, v in td.items()]
    g = r.get("gap_covered")
    tri = r.get("triage", {})
    return (f"  test Dice: {', '.join(parts)}; gap covered {g if g is not None else 'n/a'}; "
            f"step ratio {r['step_time']['ratio']}; triage spearman {tri.get('spearman', 'n/a')}")
