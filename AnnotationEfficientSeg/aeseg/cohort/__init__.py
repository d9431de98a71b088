"""Cohorts: the manifest of cases, discovery from folders or ``cohort.csv``, reading
images with their geometry, and validation."""

from .manifest import Case, Cohort, load_cohort  # noqa: F401
from .reading import Geometry, ImageData, read_image, read_label  # noqa: F401
