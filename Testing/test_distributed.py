"""The same command under torchrun: two gloo processes on the CPU, rank 0 writes the job."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
from pathlib import Path

from aeseg.cohort import load_cohort
from aeseg.engine.events import read_events

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_cpu_processes(tiny_cohort, tmp_path):
    job = tmp_path / "ddp"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "AnnotationEfficientSeg"), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "aeseg", "train", str(tiny_cohort), "--method", "supervised",
           "--labels", "all", "--out", str(job), "--epochs", "2", "--device", "cpu", "--no-progress",
           "--set", "batch_size=2", "--set", "data.size=32", "--set", "features=8", "--set", "depth=3"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("done:") == 1  # rank 0 alone reports
    ev = read_events(job / "events.jsonl")
    assert ev[0]["type"] == "start" and ev[0]["world_size"] == 2
    assert ev[-1]["type"] == "done"
    assert sum(e["type"] == "start" for e in ev) == 1  # one writer
    co = load_cohort(tiny_cohort)
    n_slices = sum(3 for c in co.cases if c.split == "train" and c.label_kind != "none")
    steps = [e["steps"] for e in ev if e["type"] == "progress"]
    assert set(steps) == {math.ceil(math.ceil(n_slices / 2) / 2)}  # each rank takes half of every epoch
    assert (job / "model" / "model.pt").is_file() and (job / "quality.csv").is_file()
