"""Shared fixtures. The core is importable without installing it: the module folder
goes on sys.path, as it does inside 3D Slicer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "AnnotationEfficientSeg"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def write_img(path, array_zyx, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None):
    """Write a (Z,Y,X) or (Y,X) array with SimpleITK (format from the extension)."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.asarray(array_zyx))
    d = img.GetDimension()
    img.SetSpacing(tuple(spacing[:d]))
    img.SetOrigin(tuple(origin[:d]))
    if direction is not None:
        img.SetDirection(direction)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))
    return Path(path)


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory):
    """A seeded noisy_organ phantom: 3D volumes, clean + noisy + unlabelled, train/val/test."""
    from aeseg.data.phantoms import PhantomConfig, make_phantom_cohort

    root = tmp_path_factory.mktemp("cohort") / "noisy_organ"
    make_phantom_cohort(root, PhantomConfig(task="noisy_organ", seed=3, n_train=6, n_val=2, n_test=2, size=32,
                                            n_slices=3, setting="mixed", noise="mid", n_clean=2))
    return root


def snapshot(folder):
    """Every file below ``folder`` with its size and mtime: to prove nothing was written."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def aeseg(*args, check=True):
    """``python -m aeseg ARGS`` in a subprocess, as the Slicer module and users run it."""
    env = dict(os.environ, PYTHONPATH=str(MODULE_DIR), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "aeseg", *map(str, args)], env=env, capture_output=True, text=True,
                       timeout=600)
    if check:
        assert r.returncode == 0, r.stderr
    return r


@pytest.fixture(scope="session")
def cli_job(tiny_cohort, tmp_path_factory):
    """A finished supervised job (2 epochs, tiny U-Net) on ``tiny_cohort``, trained through the CLI."""
    job = tmp_path_factory.mktemp("cli") / "job"
    aeseg("train", tiny_cohort, "--method", "supervised", "--labels", "all", "--out", job, "--epochs", "2",
          "--no-progress", "--set", "data.size=32", "--set", "features=8", "--set", "depth=3")
    return job
