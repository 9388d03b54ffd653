"""Write docs/admin-bounds.md's table from the bounds declared in ``recsys.core.config``.

The table sits between ``<!-- bounds:begin -->`` and ``<!-- bounds:end -->``; ``--check``
exits 1 when the document differs (tests/web/test_admin_bounds.py runs it), so adding a
strategy or changing a bound cannot leave the page stale.
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "admin-bounds.md")
BEGIN, END = "<!-- bounds:begin -->", "<!-- bounds:end -->"


def render(text: str) -> str:
    """``text`` with the table between the markers rewritten from ``bounds()``."""
    sys.path.insert(0, ROOT)
    from recsys.core.config import bounds

    rows = ["| key | rule |", "|-----|------|"]
    rows += [f"| `{key}` | {rule.replace('|', chr(92) + '|')} |" for key, rule in bounds()]
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[:start] + "\n" + "\n".join(rows) + "\n" + text[end:]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if the document is stale")
    args = ap.parse_args()
    with open(DOC) as f:
        text = f.read()
    new = render(text)
    if args.check:
        if new != text:
            print("docs/admin-bounds.md is out of date: run", __file__)
            return 1
        return 0
    with open(DOC, "w") as f:
        f.write(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
