"""Lines per module, in all and without docstrings, comments and blank lines ("code").

    .venv/bin/python scripts/module_sizes.py            # modules over 500 lines in all
    .venv/bin/python scripts/module_sizes.py --over 0   # every module

Used to keep modules small: a module over about 500 lines of code should be split, or say why
in its docstring.
"""

from __future__ import annotations

import argparse
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def code_lines(path: str) -> tuple[int, int]:
    """``(lines in all, lines of code)`` of one Python file.

    Parameters
    ----------
    path : str
        The file.

    Returns
    -------
    (int, int)
        Every line; the lines that are neither blank, comments nor docstrings.
    """
    with open(path) as f:
        src = f.read()
    doc: set[int] = set()
    for node in ast.walk(ast.parse(src)):
        body = getattr(node, "body", None)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = body[0] if body else None
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                doc.update(range(first.lineno, first.end_lineno + 1))
    lines = src.split("\n")
    code = sum(
        1
        for i, line in enumerate(lines, 1)
        if line.strip() and not line.strip().startswith("#") and i not in doc
    )
    return len(lines), code


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--over", type=int, default=500, help="list modules over this many lines")
    ap.add_argument("packages", nargs="*", default=["recsys", "strategies", "features"])
    args = ap.parse_args()
    rows = []
    for pkg in args.packages:
        for folder, _, files in os.walk(os.path.join(ROOT, pkg)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    total, code = code_lines(path)
                    if total > args.over:
                        rows.append((code, total, os.path.relpath(path, ROOT)))
    print("| module | lines | code |\n|---|---:|---:|")
    for code, total, path in sorted(rows, reverse=True):
        print(f"| {path} | {total} | {code} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
