"""Write docs/admin-bounds.md's table from the bounds declared in ``recsys.core.config``.

The table sits between ``<!-- bounds:begin -->`` and ``<!-- bounds:end -->``; ``--check``
exits 1 when the document differs (tests/web/test_admin_bounds.py runs it), so adding a
strategy or changing a bound cannot leave the page stale.
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import docgen  # noqa: E402

DOC = os.path.join(ROOT, "docs", "admin-bounds.md")
BEGIN, END = "<!-- bounds:begin -->", "<!-- bounds:end -->"


def render(text: str) -> str:
    """``text`` with the table between the markers rewritten from ``bounds()``."""
    sys.path.insert(0, ROOT)
    from recsys.core.config import bounds

    rows = ["| key | rule |", "|-----|------|"]
    rows += [f"| `{key}` | {rule.replace('|', chr(92) + '|')} |" for key, rule in bounds()]
    return docgen.between(text, BEGIN, END, "\n".join(rows))


def main() -> int:
    """Write the table, or check it (``--check``)."""
    return docgen.main(DOC, render, __doc__.splitlines()[0], __file__)


if __name__ == "__main__":
    raise SystemExit(main())
