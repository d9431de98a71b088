"""Methods: one module per method and a registry (``aeseg methods`` lists them)."""

from .base import CaseQuality, CohortSummary, EpochReport, Method, MethodContext, Phase, QualityResult, StepInfo  # noqa: F401
from .registry import all_methods, get_method, register  # noqa: F401
