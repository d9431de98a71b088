"""Task standardization (AIDE): a cohort with a few clean labels and unlabelled cases
becomes a noisy-label cohort. A supervised model is trained on the clean labels in a
sub-job (``JOB/standardize/``, itself a complete, resumable job folder) and its
predictions become the ``noisy`` labels of the unlabelled training cases. The cohort
folder is untouched: the pseudo labels live in the sub-job's ``pseudo_labels/``.
"""

from __future__ import annotations

from pathlib import Path

from ..cohort.manifest import Cohort
from .config import JobConfig, resolve_config
from .events import read_events
from .job import JobFolder

SUBDIR = "standardize"


def needs_standardization(cohort: Cohort, cfg: JobConfig) -> bool:
    if not getattr(cfg.method_config, "standardize", False):
        return False
    train = [c for c in cohort.cases if c.split in ("train", "val") and not (c.split == "val" and c.clean_label)]
    return any(c.label_kind == "none" for c in train) and any(c.label_kind == "clean" for c in train)


def standardize(job: JobFolder, cohort: Cohort, cfg: JobConfig, progress_bar=None) -> tuple[Cohort | None, str]:
    """Run (or resume, or reuse) the standardization sub-job → (cohort with pseudo labels, status)."""
    from .loop import create_job, run_job

    sub_root = job.root / SUBDIR
    sub = JobFolder(sub_root, writer=job.writer, parent=job)
    done = any(e.get("type") == "done" for e in read_events(sub.root / "events.jsonl"))
    if not done:
        epochs = int(getattr(cfg.method_config, "standardize_epochs", 0) or cfg.engine.epochs)
        sub_cfg = resolve_config("supervised", {"labels": "clean", "engine": {**_engine_dict(cfg), "epochs": epochs},
                                                "data": _data_dict(cfg)}, seed=cfg.seed, device=cfg.device)
        resume = (sub.checkpoints / "last.pt").exists()
        if not resume:
            if sub.root.exists():  # created but never checkpointed: start again
                import shutil

                shutil.rmtree(sub.root)
            create_job(sub.root, cohort.root, sub_cfg, command=["aeseg", "standardize"], job=sub)
            job.events.emit("note", message="task standardization: training a supervised model on the clean labels")
        res = run_job(sub.root, resume=resume, progress_bar=progress_bar, job=sub)
        if res.status != "done":
            return None, res.status
    overrides = {}
    for c in cohort.cases:
        if c.label_kind == "none" and c.split in ("train", "val"):
            p = sub.pseudo_label(c.case_id)
            if p.is_file():
                overrides[c.case_id] = p
    job.events.emit("note", message=f"task standardization: pseudo labels for {len(overrides)} unlabelled case(s)",
                    pseudo_labels=[job.rel(Path(p)) for p in overrides.values()])
    return cohort.with_labels(overrides, kind="noisy"), "done"


def _engine_dict(cfg: JobConfig) -> dict:
    import dataclasses

    return dataclasses.asdict(cfg.engine)


def _data_dict(cfg: JobConfig) -> dict:
    import dataclasses

    return dataclasses.asdict(cfg.data)
