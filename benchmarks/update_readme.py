"""Write the table of ``benchmarks/table.py`` into README.md between its bench markers."""

from __future__ import annotations

import re
from pathlib import Path

from table import tables

README = Path(__file__).resolve().parents[1] / "README.md"

if __name__ == "__main__":
    text = README.read_text()
    block = "<!-- bench:start -->\n" + tables() + "<!-- bench:end -->"
    README.write_text(re.sub(r"<!-- bench:start -->.*?<!-- bench:end -->", lambda _: block, text, flags=re.S))
