"""What the scripts that write a generated table into a document share: replace the text between
two markers, and a ``main`` with ``--check`` (exit 1 when the document is stale; the tests run
the check) for ``scripts/gen_architecture_stages.py`` and ``scripts/gen_admin_bounds.py``."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def between(text: str, begin: str, end: str, body: str) -> str:
    """``text`` with what stands between the ``begin`` and ``end`` markers replaced by ``body``.

    Parameters
    ----------
    text : str
        The document.
    begin, end : str
        The marker lines (kept).
    body : str
        The new content, without the surrounding newlines.

    Returns
    -------
    str
    """
    start, stop = text.index(begin) + len(begin), text.index(end)
    return text[:start] + "\n" + body + "\n" + text[stop:]


def main(doc: str, render: Callable[[str], str], description: str, script: str) -> int:
    """Rewrite ``doc`` with ``render``, or with ``--check`` report whether it is stale.

    Parameters
    ----------
    doc : str
        The document's path.
    render : callable
        ``render(text) -> text`` with the generated part rewritten.
    description : str
        The command's one-line help.
    script : str
        The generating script's path, named in the stale message.

    Returns
    -------
    int
        The exit status: 1 when ``--check`` finds the document stale, else 0.
    """
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--check", action="store_true", help="exit 1 if the document is stale")
    args = ap.parse_args()
    with open(doc) as f:
        text = f.read()
    new = render(text)
    if args.check:
        if new != text:
            print(f"{doc} is out of date: run {script}")
            return 1
        return 0
    with open(doc, "w") as f:
        f.write(new)
    return 0
