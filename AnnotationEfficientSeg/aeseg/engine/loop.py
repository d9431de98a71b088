"""The one training loop.

``create_job`` writes ``job.json``; ``run_job`` trains (or resumes) the method it names:
device chosen at run time, seeding, AMP on GPU only, phases × epochs × steps,
validation Dice, ``last`` and ``best`` checkpoints, cancellation (SIGTERM, SIGINT or a
``cancel`` file: the current step finishes, the state is saved, a ``cancelled`` event is
written), resume from ``checkpoints/last.pt`` at the exact step, events and an optional
terminal progress bar, and under ``torchrun`` DistributedDataParallel with rank 0 alone
writing the job folder.

Every epoch's batch order is drawn from a generator seeded by (seed, phase, epoch), and
all method randomness comes from generators whose states are checkpointed, so a
resumed run continues the same sequence of batches.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..cohort.manifest import Cohort, load_cohort
from ..cohort.summary import after_standardization, summarize
from ..data.dataset import CohortData, load_cohort_data
from ..errors import AesegError, CohortError, JobError, MethodUnavailable
from ..methods.base import MethodContext, Phase, StepInfo
from ..methods.registry import get_method
from ..quality.metrics import dice
from .config import JobConfig, resolve_config
from .device import pick_device, seed_everything
from .events import sanitize
from .inference import predict_case
from .job import JobFolder, validate_job_path, versions
from .standardize import needs_standardization, standardize


@dataclass
class LoopState:
    phase: int = 0
    epoch: int = 0
    step: int = 0  # next step to run in the current epoch
    global_step: int = 0
    complete: bool = False
    sums: dict[str, float] = field(default_factory=dict)  # partial epoch loss sums
    count: int = 0
    history: list[dict] = field(default_factory=list)
    best: float = -1.0
    best_epoch: int = -1
    elapsed: float = 0.0  # training seconds before this process


@dataclass
class JobResult:
    job: Path
    status: str  # done | cancelled
    best_val_dice: float | None
    epochs_run: int
    wall_s: float


class _Stop:
    """Set by SIGTERM / SIGINT; checked between steps."""

    def __init__(self):
        self.flag = False
        self._old: dict[int, Any] = {}

    def install(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread
                pass

    def _handle(self, signum, frame):
        self.flag = True

    def restore(self):
        for sig, h in self._old.items():
            signal.signal(sig, h)


def _dist() -> tuple[int, int, int]:
    ws = int(os.environ.get("WORLD_SIZE", "1"))
    return ws, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))


def init_distributed(device: str = "auto") -> None:
    """Under ``torchrun`` (WORLD_SIZE > 1): join the process group (NCCL on GPU, gloo on CPU)."""
    ws, _, _ = _dist()
    if ws > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and device != "cpu" else "gloo"
        torch.distributed.init_process_group(backend)


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def create_job(out: str | os.PathLike, cohort: str | os.PathLike, cfg: JobConfig, command: list[str] | None = None,
               job: JobFolder | None = None) -> JobFolder:
    """Check the cohort and method, then write ``job.json`` into a new job folder."""
    ws, rank, _ = _dist()
    job = job or JobFolder(validate_job_path(out), writer=rank == 0)
    init_distributed(cfg.device)
    co = load_cohort(cohort)
    _check_cohort(co, cfg)
    meta = {
        "method": cfg.method,
        "cohort": str(co.root),
        "config": cfg.to_dict(),
        "seed": cfg.seed,
        "device": cfg.device,
        "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": command or [],
        "world_size": ws,
    }
    if job.writer:
        job.create(meta)
    _barrier()  # other ranks wait until rank 0 has written job.json
    return job


def _check_cohort(co: Cohort, cfg: JobConfig) -> None:
    errors = [p for p in co.problems if p.severity == "error"]
    if errors:
        more = f" (and {len(errors) - 1} more; run aeseg validate)" if len(errors) > 1 else ""
        raise CohortError(f"cohort has problems: {errors[0]}{more}")
    cls = get_method(cfg.method)
    summary = summarize(co)
    if getattr(cfg.method_config, "standardize", False):
        summary = after_standardization(summary)
    reason = cls.unsupported_reason(summary, cfg.method_config)
    if reason:
        raise MethodUnavailable(f"method '{cfg.method}' cannot run on {co.root}: {reason}")


def config_from_meta(meta: dict) -> JobConfig:
    return resolve_config(meta["method"], meta.get("config", {}), seed=int(meta.get("seed", 0)), device=meta.get("device", "auto"))


def run_job(job_dir: str | os.PathLike, resume: bool = False, progress_bar: bool | None = None,
            device: str | None = None, job: JobFolder | None = None,
            echo: Callable[[dict], None] | None = None) -> JobResult:
    """Train the job described by ``job_dir/job.json`` (resume from its last checkpoint).
    ``echo``: called with every event the job writes (on rank 0), e.g. to print notes."""
    t0 = time.time()
    ws, rank, local_rank = _dist()
    job = job or JobFolder(validate_job_path(job_dir), writer=rank == 0)
    if echo is not None:
        job.events.echo = echo
    meta = job.read_meta()
    cfg = config_from_meta(meta)
    init_distributed(device or cfg.device)
    dev = pick_device(device or cfg.device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if cfg.engine.threads:
        torch.set_num_threads(cfg.engine.threads)
    seed_everything(cfg.seed)
    cohort = load_cohort(meta["cohort"])
    _check_cohort(cohort, cfg)
    if needs_standardization(cohort, cfg):
        if resume and not (job.checkpoints / "last.pt").exists():
            resume = False  # stopped during standardization: the main run has not started
        cohort, sub_status = standardize(job, cohort, cfg, progress_bar)
        if sub_status != "done":
            job.events.emit("cancelled", phase="standardize")
            return JobResult(job.root, sub_status, None, 0, time.time() - t0)
    data = load_cohort_data(cohort, cfg.data)
    ctx = MethodContext(device=dev, data=data, seed=cfg.seed, amp=cfg.engine.amp, world_size=ws, rank=rank, cohort=cohort)
    method = get_method(cfg.method)(cfg.method_config, ctx)
    phases = method.phases(cfg.engine.epochs)
    st = LoopState()
    if resume:
        ck = job.load_checkpoint("last")
        _load_state(method, ck)
        st = LoopState(**ck["loop"])
        job.clear_cancel()
        job.events.emit("resumed", phase=phases[min(st.phase, len(phases) - 1)].name, epoch=st.epoch + 1, step=st.step, device=str(dev))
    else:
        if (job.checkpoints / "last.pt").exists():
            raise JobError(f"{job.root}: has a checkpoint already; use --resume {job.root}")
        job.events.emit("start", method=cfg.method, device=str(dev), world_size=ws, epochs=cfg.engine.epochs,
                        phases=[dataclasses.asdict(p) for p in phases],
                        train_slices=len(data.train), val_cases=len(data.val.records))
    stop = _Stop()
    stop.install()
    try:
        status = "done"
        if not st.complete:
            status = _train(job, method, ctx, cfg, phases, st, stop, progress_bar, t0)
        if status == "done":
            from .outputs import finalize

            if cfg.engine.final == "best" and st.best_epoch >= 0 and (job.checkpoints / "best.pt").exists():
                _load_state(method, job.load_checkpoint("best"), modules_only=True)
            if job.writer:
                finalize(job, method, data, cfg, st, cohort)
            job.events.emit("done", best_val_dice=st.best if st.best >= 0 else None, wall_s=round(time.time() - t0, 2))
        return JobResult(job.root, status, st.best if st.best >= 0 else None, len(st.history), time.time() - t0)
    except AesegError as e:
        job.events.emit("error", message=str(e))
        raise
    except Exception as e:  # noqa: BLE001 - recorded for the UI, then re-raised
        job.events.emit("error", message=f"{type(e).__name__}: {e}")
        raise
    finally:
        stop.restore()


def _unwrap(m: torch.nn.Module) -> torch.nn.Module:
    return getattr(m, "module", m) if isinstance(m, torch.nn.parallel.DistributedDataParallel) else m


def _save(job: JobFolder, name: str, method, st: LoopState) -> None:
    state = {
        "format": 1,
        "loop": dataclasses.asdict(st),
        "modules": {k: _unwrap(m).state_dict() for k, m in method.modules().items()},
        "optim": {k: o.state_dict() for k, o in method.optimizers().items()},
        "extra": method.extra_state(),
        "rng": {"torch": torch.get_rng_state()},
    }
    if torch.cuda.is_available():
        state["rng"]["cuda"] = torch.cuda.get_rng_state_all()
    job.save_checkpoint(name, state)


def _load_state(method, ck: dict, modules_only: bool = False) -> None:
    for k, m in method.modules().items():
        _unwrap(m).load_state_dict(ck["modules"][k])
    if modules_only:
        return
    for k, o in method.optimizers().items():
        o.load_state_dict(ck["optim"][k])
    method.load_extra_state(ck.get("extra", {}))
    torch.set_rng_state(ck["rng"]["torch"])
    if "cuda" in ck["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ck["rng"]["cuda"])


def _epoch_order(indices: torch.Tensor, seed: int, phase: int, epoch: int, ws: int, rank: int,
                 length: int = 0) -> torch.Tensor:
    """The epoch's sample order: a seeded permutation, repeated to ``length`` if given."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + phase * 10_007 + epoch) % (2**63))
    order = indices[torch.randperm(len(indices), generator=g)]
    while length and len(order) < length * ws:
        order = torch.cat([order, indices[torch.randperm(len(indices), generator=g)]])
    if length:
        order = order[: length * ws]
    if ws > 1:  # equal shards, padded by wrapping around (as DistributedSampler does)
        per = math.ceil(len(order) / ws)
        order = torch.cat([order, order[: per * ws - len(order)]])[rank::ws]
    return order


def _stop_requested(job: JobFolder, stop: _Stop, ws: int) -> bool:
    flag = stop.flag or job.cancel_requested()
    if ws > 1:
        t = torch.tensor([1 if flag else 0])
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        flag = bool(t.item())
    return flag


def _train(job, method, ctx, cfg: JobConfig, phases: list[Phase], st: LoopState, stop: _Stop, progress_bar, t0) -> str:
    ecfg = cfg.engine
    bar = None
    show_bar = sys.stderr.isatty() if progress_bar is None else progress_bar
    last_emit = 0.0
    run_start = time.time()
    run_steps = 0
    for pi in range(st.phase, len(phases)):
        phase = phases[pi]
        method.begin_phase(phase)
        indices = method.train_indices(phase)
        if len(indices) == 0:
            raise MethodUnavailable(f"method '{cfg.method}' has no training slices in phase '{phase.name}'")
        for epoch in range(st.epoch, phase.epochs):
            bs = ecfg.batch_size
            order = _epoch_order(indices, cfg.seed, pi, epoch, ctx.world_size, ctx.rank,
                                 ecfg.steps_per_epoch * bs)
            steps = max(1, math.ceil(len(order) / bs))
            if show_bar and job.writer:
                from tqdm import tqdm

                bar = tqdm(total=steps, initial=st.step, desc=f"{phase.name} {epoch + 1}/{phase.epochs}", leave=False, file=sys.stderr)
            method.train_mode(True)
            for step in range(st.step, steps):
                if _stop_requested(job, stop, ctx.world_size):
                    st.phase, st.epoch, st.step = pi, epoch, step
                    st.elapsed += time.time() - run_start
                    _save(job, "last", method, st)
                    job.events.emit("cancelled", phase=phase.name, epoch=epoch + 1, step=step, steps=steps)
                    if bar:
                        bar.close()
                    return "cancelled"
                idx = order[step * bs:(step + 1) * bs]
                batch = {k: (v.to(ctx.device, non_blocking=True) if torch.is_tensor(v) else v)
                         for k, v in method.make_batch(idx, phase).items()}
                info = StepInfo(phase.name, epoch, phase.epochs, step, steps, st.global_step)
                losses = method.train_step(batch, info)
                st.global_step += 1
                st.count += 1
                run_steps += 1
                for k, v in losses.items():
                    st.sums[k] = st.sums.get(k, 0.0) + float(v)
                if bar:
                    bar.update(1)
                    bar.set_postfix({k: f"{v:.3f}" for k, v in list(losses.items())[:3]})
                now = time.time()
                if now - last_emit >= ecfg.progress_interval or step == steps - 1:
                    last_emit = now
                    job.events.emit("progress", phase=phase.name, epoch=epoch + 1, epochs=phase.epochs,
                                    step=step + 1, steps=steps, losses=sanitize(losses),
                                    eta_s=_eta((now - run_start) / run_steps, phases, pi, epoch, step, steps))
            if bar:
                bar.close()
                bar = None
            info = StepInfo(phase.name, epoch, phase.epochs, steps - 1, steps, st.global_step)
            report = method.end_epoch(info)
            for ev in report.events:
                job.events.emit(ev.pop("type", "note"), **ev)
            losses = {k: v / max(st.count, 1) for k, v in st.sums.items()}
            entry = {"phase": phase.name, "epoch": epoch + 1, "losses": sanitize(losses), **sanitize(report.metrics)}
            last_epoch = epoch == phase.epochs - 1
            if len(ctx.data.val.records) and ((epoch + 1) % ecfg.val_every == 0 or last_epoch):
                vd = validate(method, ctx.data, ctx.device)
                entry["val_dice"] = round(vd, 6)
                if vd > st.best:
                    st.best, st.best_epoch = vd, len(st.history)
                    entry["best"] = True
            st.history.append(entry)
            st.sums, st.count, st.step = {}, 0, 0
            st.phase, st.epoch = pi, epoch + 1
            if entry.get("best"):
                _save(job, "best", method, st)
            if last_epoch and pi == len(phases) - 1:
                st.complete = True
            _save(job, "last", method, st)
            job.events.emit("epoch", **entry)
        st.phase, st.epoch = pi + 1, 0
    st.complete = True
    st.elapsed += time.time() - run_start
    _save(job, "last", method, st)
    return "done"


def _eta(per_step: float, phases: list[Phase], pi: int, epoch: int, step: int, steps: int) -> float:
    """Seconds left, from this process's mean step time (validation time not counted)."""
    left = (steps - step - 1) + (phases[pi].epochs - epoch - 1) * steps
    left += sum(p.epochs for p in phases[pi + 1:]) * steps
    return round(per_step * left, 1)


def validate(method, data: CohortData, device) -> float:
    """Mean Dice over the validation cases, on their original grids. When the cases carry
    presence tags, over the ``present`` ones only: on an absent image Dice is 1 for an
    empty prediction, so a model that segments nothing would score the absent share."""
    method.train_mode(False)
    scores = []
    records = [r for r in data.val.records if r.case.presence == "present"] or data.val.records
    for rec in records:
        prob = predict_case(method, data.val, rec, data.config.axis, device)
        scores.append(dice(prob > 0.5, rec.label_zyx > 0))
    method.train_mode(True)
    return float(np.mean(scores)) if scores else float("nan")
