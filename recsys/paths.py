"""Where the project's own files are. A leaf: imports nothing of ours, so any layer may use it.

``DATA_DIR`` is package data (``recsys/data``, shipped in the wheel; ``data/`` at the checkout's
root links to it). ``PROJECT_ROOT`` is the folder above the package: the source checkout when
running from one, ``site-packages`` in an installed wheel (so only development tools use it).
"""

from __future__ import annotations

import os

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# recsys/paths.py -> recsys/ -> the project root.
PROJECT_ROOT = os.path.dirname(_PACKAGE_DIR)
DATA_DIR = os.path.join(_PACKAGE_DIR, "data")
