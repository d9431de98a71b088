"""In-memory slice datasets with role and tag metadata.

Every case is read once (SimpleITK), normalised, sliced on the chosen axis and
resized in-plane; the slices of all cases of a split are stacked into one
:class:`SliceSet`. Each slice carries its case, its label kind (clean / noisy / none),
its presence tag and its domain, so a method can select what it trains on. Labels are
kept in a tensor that methods may rewrite (AIDE's label correction works on copies).
Small and medium cohorts (hundreds of volumes at 64–256 px) fit in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..cohort.manifest import Case, Cohort
from ..cohort.reading import Geometry, read_image, read_label
from ..errors import CohortError
from .slicing import inplane_shape, to_slices
from .transforms import DataConfig, normalise, resize_slices

KIND_CODES = {"clean": 0, "noisy": 1, "none": 2}
PRESENCE_CODES = {None: -1, "absent": 0, "present": 1}


@dataclass
class CaseRecord:
    """One case as loaded: where its slices sit in the set, and what is needed to map
    a prediction back onto its original grid."""

    case: Case
    geometry: Geometry
    start: int  # index of the first slice in the SliceSet
    count: int  # number of slices
    inplane: tuple[int, int]  # original (H, W) of a slice
    label_zyx: np.ndarray | None  # given label at original resolution (binary), if any
    truth_zyx: np.ndarray | None = None  # evaluation-only true label, if the cohort has one

    @property
    def case_id(self) -> str:
        return self.case.case_id

    @property
    def kind(self) -> str:
        return self.case.label_kind

    @property
    def slice_indices(self) -> range:
        return range(self.start, self.start + self.count)


@dataclass
class SliceSet(torch.utils.data.Dataset):
    """Stacked slices of several cases: ``images (N, C, S, S)``, ``labels (N, 1, S, S)``."""

    images: torch.Tensor
    labels: torch.Tensor  # long; zeros where the slice has no label
    kind: torch.Tensor  # (N,) KIND_CODES
    presence: torch.Tensor  # (N,) PRESENCE_CODES
    case_index: torch.Tensor  # (N,) index into records
    slice_index: torch.Tensor  # (N,) slice number within its case
    records: list[CaseRecord] = field(default_factory=list)
    domains: list[str | None] = field(default_factory=list)  # per record

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> dict:
        return self.batch(torch.as_tensor([i]))

    @property
    def has_label(self) -> torch.Tensor:
        return self.kind != KIND_CODES["none"]

    def indices(self, kinds: tuple[str, ...] | None = None, presence: str | None = None) -> torch.Tensor:
        """Indices of the slices whose case has one of ``kinds`` (and the presence tag)."""
        m = torch.ones(len(self), dtype=torch.bool)
        if kinds is not None:
            m &= torch.isin(self.kind, torch.as_tensor([KIND_CODES[k] for k in kinds]))
        if presence is not None:
            m &= self.presence == PRESENCE_CODES[presence]
        return torch.nonzero(m).flatten()

    def batch(self, idx: torch.Tensor) -> dict:
        """A batch dict for slice indices ``idx`` (the engine moves it to the device)."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        return {
            "index": idx,
            "image": self.images[idx],
            "label": self.labels[idx],
            "kind": self.kind[idx],
            "presence": self.presence[idx],
            "case_index": self.case_index[idx],
        }

    @property
    def in_channels(self) -> int:
        return int(self.images.shape[1])


def load_case(case: Case, cfg: DataConfig, with_label: bool = True, with_truth: bool = False) -> tuple[np.ndarray, np.ndarray | None, CaseRecord]:
    """Read, normalise, slice and resize one case → ``(slices (n,C,S,S), labels (n,S,S) | None, record)``."""
    img = read_image(case.image)
    if not np.all(np.isfinite(img.array)):
        raise CohortError(f"{case.image}: image contains NaN/Inf voxels; fix or remove the case (aeseg validate lists them)")
    lv = case.label_value if case.label_value is not None else (cfg.label_value or None)
    label = None
    if with_label and case.label is not None:
        label, lgeom = read_label(case.label, lv)
        if not lgeom.same_grid(img.geometry):
            raise CohortError(f"{case.label}: label grid differs from its image ({img.geometry.describe_difference(lgeom)}); "
                              "resample the label onto the image")
    truth = None
    if with_truth and case.truth is not None:
        truth, _ = read_label(case.truth, lv)
    if img.geometry.ndim == 2 and cfg.axis != 2:
        raise CohortError(f"{case.image}: a 2D image can only be sliced on axis 2")
    arr = normalise(img.array, cfg)
    sl = resize_slices(to_slices(arr, cfg.axis), cfg.size, "bilinear")
    lab = None
    if label is not None:
        lab = resize_slices(to_slices(label[None].astype(np.float32), cfg.axis).astype(np.float32), cfg.size, "nearest")[:, 0]
        lab = (lab > 0.5).astype(np.uint8)
    rec = CaseRecord(case, img.geometry, 0, sl.shape[0], inplane_shape(img.geometry.shape_zyx, cfg.axis), label, truth)
    return sl, lab, rec


def build_slice_set(cases: list[Case], cfg: DataConfig, with_truth: bool = False) -> SliceSet:
    """Load ``cases`` into one :class:`SliceSet` (channels must agree across cases)."""
    imgs, labs, kinds, pres, cidx, sidx, recs, doms = [], [], [], [], [], [], [], []
    start = 0
    channels = None
    for ci, case in enumerate(cases):
        sl, lab, rec = load_case(case, cfg, with_truth=with_truth)
        if channels is None:
            channels = sl.shape[1]
        elif sl.shape[1] != channels:
            raise CohortError(f"{case.image}: {sl.shape[1]} channels, other cases have {channels}; "
                              "convert all images to grey or all to RGB")
        n = sl.shape[0]
        rec.start = start
        start += n
        imgs.append(sl)
        labs.append(lab if lab is not None else np.zeros((n, cfg.size, cfg.size), np.uint8))
        kind = case.label_kind if lab is not None else "none"
        kinds.append(np.full(n, KIND_CODES[kind]))
        pres.append(np.full(n, PRESENCE_CODES.get(case.presence, -1)))
        cidx.append(np.full(n, ci))
        sidx.append(np.arange(n))
        recs.append(rec)
        doms.append(case.domain)
    if not recs:
        size = cfg.size
        return SliceSet(torch.zeros(0, 1, size, size), torch.zeros(0, 1, size, size, dtype=torch.long),
                        torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                        torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), [], [])
    return SliceSet(
        images=torch.from_numpy(np.concatenate(imgs)).float(),
        labels=torch.from_numpy(np.concatenate(labs)).long()[:, None],
        kind=torch.from_numpy(np.concatenate(kinds)).long(),
        presence=torch.from_numpy(np.concatenate(pres)).long(),
        case_index=torch.from_numpy(np.concatenate(cidx)).long(),
        slice_index=torch.from_numpy(np.concatenate(sidx)).long(),
        records=recs,
        domains=doms,
    )


@dataclass
class CohortData:
    """The slices a job works with: ``train`` (what methods learn from), ``val`` (model
    selection, clean labels only) and ``test`` (predicted, never learned from)."""

    train: SliceSet
    val: SliceSet
    test: SliceSet
    config: DataConfig

    @property
    def in_channels(self) -> int:
        for s in (self.train, self.val, self.test):
            if len(s):
                return s.in_channels
        return 1

    def all_records(self) -> list[tuple[str, SliceSet, CaseRecord]]:
        out = []
        for name, s in (("train", self.train), ("val", self.val), ("test", self.test)):
            out.extend((name, s, r) for r in s.records)
        return out


def load_cohort_data(cohort: Cohort, cfg: DataConfig, with_truth: bool = False) -> CohortData:
    """Load the train / val / test splits of ``cohort``. Val cases without a clean label
    are moved to train (they cannot select a model)."""
    train = [c for c in cohort.cases if c.split == "train"]
    val = [c for c in cohort.cases if c.split == "val" and c.clean_label is not None]
    train += [c for c in cohort.cases if c.split == "val" and c.clean_label is None]
    test = [c for c in cohort.cases if c.split == "test"]
    if not train:
        raise CohortError(f"{cohort.root}: no training cases (every case has split val or test)")
    return CohortData(build_slice_set(train, cfg, with_truth), build_slice_set(val, cfg, with_truth),
                      build_slice_set(test, cfg, with_truth), cfg)
