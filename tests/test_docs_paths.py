"""The code paths the documents name exist (a moved module must not leave a stale map), and the
README's links lead somewhere (the docs site's own links are checked by ``mkdocs build
--strict``, scripts/ci_docs.sh)."""

from __future__ import annotations

import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = [
    "README.md",
    "ARCHITECTURE.md",
    "clients/typescript/README.md",
    *glob.glob("docs/**/*.md", root_dir=ROOT, recursive=True),
]
PATH = re.compile(r"\b(?:recsys|strategies|features|bench|scripts|tests)/[\w/]+\.py\b")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("doc", sorted(DOCS))
def test_every_source_path_a_document_names_exists(doc):
    with open(os.path.join(ROOT, doc)) as f:
        text = f.read()
    missing = sorted({p for p in PATH.findall(text) if not os.path.exists(os.path.join(ROOT, p))})
    assert not missing, f"{doc} names files that do not exist: {missing}"


@pytest.mark.parametrize("doc", ["README.md", "ARCHITECTURE.md", "clients/typescript/README.md"])
def test_relative_links_outside_the_docs_site_resolve(doc):
    with open(os.path.join(ROOT, doc)) as f:
        text = f.read()
    here = os.path.dirname(os.path.join(ROOT, doc))
    links = [u for u in LINK.findall(text) if "://" not in u and not u.startswith("mailto:")]
    missing = sorted(u for u in links if not os.path.exists(os.path.join(here, u)))
    assert not missing, f"{doc} links to files that do not exist: {missing}"


def test_readme_stays_short():
    """The README is the front page (what it is, the two commands, a tour, links): the rest
    belongs in docs/."""
    with open(os.path.join(ROOT, "README.md")) as f:
        assert len(f.read().splitlines()) <= 250
