"""Where the project's own files are: the source checkout's root (``gunicorn.conf.py``,
``wsgi.py``, ``data/``). A leaf: imports nothing of ours, so any layer may use it."""

from __future__ import annotations

import os

# recsys/paths.py -> recsys/ -> the project root.
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.path.join(PROJECT_ROOT, "data")
