"""Write ARCHITECTURE.md's stage table from the stage lists in the code.

The rows come from ``recsys.serving.stages.stage_rows`` (the serving stages, with the
recommender's ``recsys.core.stages.STAGES`` expanded in place). The table sits between the
``<!-- stages:begin -->`` and ``<!-- stages:end -->`` markers; ``--check`` exits 1 when the
document differs from what would be written (the test suite runs it).

    .venv/bin/python scripts/gen_architecture_stages.py          # rewrite the table
    .venv/bin/python scripts/gen_architecture_stages.py --check  # fail when out of date
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import docgen  # noqa: E402

DOC = os.path.join(ROOT, "ARCHITECTURE.md")
BEGIN, END = "<!-- stages:begin -->", "<!-- stages:end -->"


def table() -> str:
    """The stage table as Markdown."""
    sys.path.insert(0, ROOT)
    from recsys.serving.stages import stage_rows

    lines = ["| stage | answers | what it does | code |", "|---|---|---|---|"]
    lines += [f"| `{n}` | {a} | {w} | {c} |" for n, a, w, c in stage_rows()]
    return "\n".join(lines)


def render(text: str) -> str:
    """``text`` with the table between the markers replaced."""
    return docgen.between(text, BEGIN, END, table())


def main() -> int:
    """Write the table, or check it (``--check``)."""
    return docgen.main(DOC, render, __doc__.splitlines()[0], __file__)


if __name__ == "__main__":
    raise SystemExit(main())
