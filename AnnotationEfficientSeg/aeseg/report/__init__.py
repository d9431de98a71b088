"""Training reports: loss curves, an overview grid of cases with their masks, and an
HTML page tying them to the job summary and the quality table.

Figures are drawn with matplotlib's Agg canvas on explicit ``Figure`` objects (no
pyplot global state), and every file is written atomically.
"""

from .case_scatter import CasePoint, plot_case_scatter  # noqa: F401
from .corrections import CaseCorrections, plot_corrections  # noqa: F401
from .curves import plot_curves  # noqa: F401
from .html import ReportFigure, write_report  # noqa: F401
from .lqss import RoundStat, plot_lqss  # noqa: F401
from .overview import OverviewCase, plot_overview  # noqa: F401
