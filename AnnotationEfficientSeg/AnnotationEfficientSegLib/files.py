"""Permissions for files the module writes through a temporary file and a rename.

A temporary file is created owner-only (0600); the final file should get what a plain
``open(path, "w")`` gives it, so that colleagues who may read the cohort folder can read
its refined labels. The core's ``aeseg.io.atomic`` does the same for job folders; this
module cannot import the core, which may not be installed yet when the panel opens.
"""

from __future__ import annotations

import os
from pathlib import Path


def umask() -> int:
    """The process's umask, read without changing it where Linux reports it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore at once
    os.umask(mask)
    return mask


def plain_mode(path: str | os.PathLike) -> int:
    """Permission bits for a new version of ``path``: the old file's, else 0666 & ~umask."""
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~umask()
