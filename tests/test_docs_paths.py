"""The code paths the documents name exist (a moved module must not leave a stale map)."""

from __future__ import annotations

import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md", "ARCHITECTURE.md", *glob.glob("docs/**/*.md", root_dir=ROOT, recursive=True)]
PATH = re.compile(r"\b(?:recsys|strategies|features|bench|scripts|tests)/[\w/]+\.py\b")


@pytest.mark.parametrize("doc", sorted(DOCS))
def test_every_source_path_a_document_names_exists(doc):
    with open(os.path.join(ROOT, doc)) as f:
        text = f.read()
    missing = sorted({p for p in PATH.findall(text) if not os.path.exists(os.path.join(ROOT, p))})
    assert not missing, f"{doc} names files that do not exist: {missing}"
