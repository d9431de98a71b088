"""Atomic writes keep a plain write's permissions and never leave a half-written file."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from aeseg.cohort.reading import Geometry
from aeseg.io.atomic import write_text, write_with
from aeseg.io.segmentation import write_segmentation


@pytest.fixture()
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_a_new_file_gets_0666_less_the_umask(tmp_path, umask_027):
    write_text(tmp_path / "quality.csv", "case,score\n")
    assert _mode(tmp_path / "quality.csv") == 0o640
    # the same as a plain open() under that umask
    (tmp_path / "plain.txt").write_text("x")
    assert _mode(tmp_path / "plain.txt") == 0o640


def test_a_replaced_file_keeps_its_permissions(tmp_path, umask_027):
    p = tmp_path / "job.json"
    p.write_text("{}")
    os.chmod(p, 0o604)
    write_text(p, '{"a": 1}')
    assert p.read_text() == '{"a": 1}' and _mode(p) == 0o604


def test_a_seg_nrrd_written_through_slicerio_is_readable_by_the_group(tmp_path, umask_027):
    geo = Geometry(size=(4, 3, 2), spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0),
                   direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    mask = np.zeros((2, 3, 4), dtype=np.uint8)
    mask[1, 1, 1:3] = 1
    write_segmentation(tmp_path / "case.seg.nrrd", mask, geo)
    assert _mode(tmp_path / "case.seg.nrrd") == 0o640


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    p = tmp_path / "report.png"
    p.write_bytes(b"old")

    def fail(tmp):
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        write_with(p, fail)
    assert p.read_bytes() == b"old"
    assert [q.name for q in tmp_path.iterdir()] == ["report.png"]
