"""What a cohort offers, summarised for methods to say whether they can run on it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CohortSummary:
    clean_train: int = 0
    noisy_train: int = 0
    unlabeled_train: int = 0
    val_clean: int = 0
    present: int = 0
    absent: int = 0
    present_with_mask: int = 0
    aux_masks: int = 0
    domains: tuple[str, ...] = ()


def summarize(cohort) -> CohortSummary:
    """Count what ``cohort`` (a :class:`~aeseg.cohort.manifest.Cohort`) offers for training.
    Val cases without a clean label count as training cases (the engine trains on them)."""
    train = [c for c in cohort.cases if c.split == "train" or (c.split == "val" and c.clean_label is None)]
    return CohortSummary(
        clean_train=sum(c.label_kind == "clean" for c in train),
        noisy_train=sum(c.label_kind == "noisy" for c in train),
        unlabeled_train=sum(c.label_kind == "none" for c in train),
        val_clean=sum(c.split == "val" and c.clean_label is not None for c in cohort.cases),
        present=sum(c.presence == "present" for c in train),
        absent=sum(c.presence == "absent" for c in train),
        present_with_mask=sum(c.presence == "present" and c.label is not None for c in train),
        aux_masks=len(cohort.aux_masks),
        domains=tuple(sorted({c.domain for c in cohort.cases if c.domain})),
    )


def after_standardization(s: CohortSummary) -> CohortSummary:
    """The summary once task standardization has given every unlabelled training case a
    pseudo label (possible when there is at least one clean case)."""
    if s.clean_train == 0 or s.unlabeled_train == 0:
        return s
    from dataclasses import replace

    return replace(s, noisy_train=s.noisy_train + s.unlabeled_train, unlabeled_train=0)
