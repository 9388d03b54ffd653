"""The examples of the README and docs/, found the way readers see them.

- ``curl`` commands: every command starting with ``curl`` in a fenced ```` ```bash ```` block
  (continuation lines and multi-line quoted bodies joined). A comment after the command (on its
  last line, or on the comment lines right after it) that starts with a status code, e.g.
  ``# 201 {"received": 1, ...}`` or ``# 404 if unknown``, is the status it must answer;
  otherwise any 2xx. A ```` ```json ```` block right after a block holding one command is the
  answer it shows. tests/test_doc_examples.py runs them all against a live service.
- TypeScript: every ```` ```ts ```` block, written out as one module each for ``tsc``
  (scripts/ci_client.sh type-checks them against the generated client):

    python scripts/doc_examples.py ts --out clients/typescript/build/doc-examples
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```(\w*)\s*$")
STATUS = re.compile(r"^#\s*(\d{3})\b")
TS_PRELUDE = 'import { createRecsysClient } from "@recsys/client";\n'
TS_CLIENT = 'const api = createRecsysClient({ baseUrl: "http://127.0.0.1:8000" });\n'


@dataclass
class Block:
    """One fenced block of a document."""

    doc: str
    line: int
    lang: str
    text: str


@dataclass
class CurlExample:
    """One ``curl`` command of a document, as its reader would run it."""

    doc: str
    line: int
    command: str
    args: list[str]
    status: int | None = None
    shows: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        """``doc:line``, for test ids and messages."""
        return f"{self.doc}:{self.line}"


def documents(root: Path = ROOT) -> list[Path]:
    """The README and every page under ``docs/``, README first, then by path.

    Parameters
    ----------
    root : Path
        The repository.

    Returns
    -------
    list[Path]
    """
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def blocks(path: Path, root: Path = ROOT) -> list[Block]:
    """The fenced blocks of one Markdown file, in order.

    Parameters
    ----------
    path : Path
        The document.
    root : Path
        The repository (names are relative to it).

    Returns
    -------
    list[Block]
    """
    out: list[Block] = []
    lang, start, body = None, 0, []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        m = FENCE.match(line.strip()) if line.startswith("```") or lang is not None else None
        if lang is None and m and line.startswith("```"):
            lang, start, body = m.group(1), n + 1, []
        elif lang is not None and line.strip() == "```":
            out.append(Block(str(path.relative_to(root)), start, lang, "\n".join(body)))
            lang = None
        elif lang is not None:
            body.append(line)
    return out


def _commands(block: Block) -> list[tuple[int, str, list[str], int | None]]:
    """``(line, text, argv, status)`` of each shell command of a bash block."""
    lines = block.text.splitlines()
    out: list[tuple[int, str, list[str], int | None]] = []
    i = 0
    while i < len(lines):
        first, text = i, lines[i]
        i += 1
        while True:
            joined = text.replace("\\\n", " ")
            try:
                argv = shlex.split(joined, comments=True)
                if text.endswith("\\"):
                    raise ValueError("continued")
                break
            except ValueError:
                if i >= len(lines):
                    raise ValueError(
                        f"{block.doc}:{block.line + first}: unterminated command"
                    ) from None
                text += "\n" + lines[i]
                i += 1
        if not argv:
            continue
        status = None
        comment = text.rsplit("\n", 1)[-1]
        tail = [comment[comment.index("#") :]] if "#" in comment else []
        while i < len(lines) and lines[i].lstrip().startswith("#"):
            tail.append(lines[i].strip())
            i += 1
        for c in tail[:1] or []:
            m = STATUS.match(c)
            status = int(m.group(1)) if m else None
        out.append((block.line + first, text, argv, status))
    return out


def curl_examples(root: Path = ROOT) -> list[CurlExample]:
    """Every ``curl`` command of the README and docs/, in reading order.

    Parameters
    ----------
    root : Path
        The repository.

    Returns
    -------
    list[CurlExample]
    """
    out: list[CurlExample] = []
    for path in documents(root):
        bs = blocks(path, root)
        for k, block in enumerate(bs):
            if block.lang != "bash":
                continue
            curls = [
                CurlExample(block.doc, line, text, argv, status)
                for line, text, argv, status in _commands(block)
                if argv[0] == "curl"
            ]
            nxt = bs[k + 1] if k + 1 < len(bs) else None
            if len(curls) == 1 and nxt is not None and nxt.lang == "json":
                curls[0].shows = nxt.text
            out.extend(curls)
    return out


def ts_examples(root: Path = ROOT) -> list[tuple[str, str]]:
    """Every TypeScript block of the README and docs/ as a module ``tsc`` can check.

    A block that does not create its own client gets the README's ``api`` in front.

    Parameters
    ----------
    root : Path
        The repository.

    Returns
    -------
    list[tuple[str, str]]
        ``(file name, module text)`` pairs.
    """
    out = []
    for path in documents(root):
        for block in blocks(path, root):
            if block.lang not in ("ts", "typescript"):
                continue
            text = block.text + "\n"
            if not re.search(r"=\s*createRecsysClient\(", text):
                text = TS_PRELUDE + TS_CLIENT + text
            elif "import " not in text:
                text = TS_PRELUDE + text
            name = re.sub(r"[^\w]+", "-", block.doc.removesuffix(".md"))
            out.append((f"{name}-{block.line}.ts", text + "export {};\n"))
    return out


def main(argv: list[str] | None = None) -> int:
    """Write the TypeScript examples as modules, or list the curl examples.

    Parameters
    ----------
    argv : list[str], optional
        Command-line arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        0.
    """
    ap = argparse.ArgumentParser(description="the README's and docs' examples")
    ap.add_argument("kind", choices=["ts", "curl"])
    ap.add_argument("--out", type=Path, help="folder for the TypeScript modules (emptied first)")
    args = ap.parse_args(argv)
    if args.kind == "curl":
        for ex in curl_examples():
            print(f"{ex.name}  {ex.status or '2xx'}  {' '.join(ex.args)}")
        return 0
    out = args.out or ROOT / "clients" / "typescript" / "build" / "doc-examples"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for name, text in ts_examples():
        (out / name).write_text(text)
    print(f"wrote {len(ts_examples())} TypeScript examples to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
