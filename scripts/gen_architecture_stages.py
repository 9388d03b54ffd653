"""Write ARCHITECTURE.md's stage table from the stage lists in the code.

The rows come from ``recsys.serving.stages.stage_rows`` (the serving stages, with the
recommender's ``recsys.core.stages.STAGES`` expanded in place). The table sits between the
``<!-- stages:begin -->`` and ``<!-- stages:end -->`` markers; ``--check`` exits 1 when the
document differs from what would be written (the test suite runs it).

    .venv/bin/python scripts/gen_architecture_stages.py          # rewrite the table
    .venv/bin/python scripts/gen_architecture_stages.py --check  # fail when out of date
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[:start] + "\n" + table() + "\n" + text[end:]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if ARCHITECTURE.md is stale")
    args = ap.parse_args()
    with open(DOC) as f:
        text = f.read()
    new = render(text)
    if args.check:
        if new != text:
            print("ARCHITECTURE.md's stage table is out of date: run", __file__)
            return 1
        return 0
    with open(DOC, "w") as f:
        f.write(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
