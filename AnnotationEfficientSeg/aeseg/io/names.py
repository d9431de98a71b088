"""Image file names: which suffixes are images, and the case id a file name gives.

Only the standard library is imported, so the Slicer module's own writers (refined
labels) can use the same rules as the core's cohort reader before the core's
requirements are installed.
"""

from __future__ import annotations

import os
from pathlib import Path

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm")
SINGLE_FILE_2D = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def image_suffix(path: str | os.PathLike) -> str | None:
    """The image suffix of ``path`` (``.nii.gz`` counts as one), or None if not an image."""
    name = Path(path).name.lower()
    if name.endswith(".seg.nrrd"):
        return ".seg.nrrd"
    for s in IMAGE_SUFFIXES:
        if name.endswith(s):
            return s
    return None


def strip_suffix(path: str | os.PathLike) -> str:
    """File name without its image suffix: ``case01.nii.gz`` → ``case01``."""
    name = Path(path).name
    s = image_suffix(name)
    return name[: -len(s)] if s else name


def mhd_data_files(header: str | os.PathLike) -> list[Path]:
    """The data files a MetaImage header (``.mhd``) names in its own folder, if they exist.

    ``ElementDataFile = LOCAL`` (data in the header file) names none; a ``LIST`` or a
    file pattern names files that this function does not resolve, so it returns none.
    """
    header = Path(header)
    try:
        with open(header, "rb") as f:
            head = f.read(65536).decode("latin-1")
    except OSError:
        return []
    for line in head.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "ElementDataFile":
            value = value.strip()
            if not value or value == "LOCAL" or value.startswith("LIST") or " " in value or "%" in value:
                return []
            p = header.parent / value
            return [p] if p.parent == header.parent and p.is_file() else []
    return []
