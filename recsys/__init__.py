"""recsys: a recommendation-serving service.

``create_app`` is imported on first use, so the model-side modules (``recsys.models.batcher``,
``recsys.config``) import without the web stack (a GPU box that only runs the deep model).
"""

from __future__ import annotations

from typing import Any

from recsys.version import __version__

__all__ = ["create_app", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from recsys.app import create_app

        return create_app
    raise AttributeError(f"module 'recsys' has no attribute {name!r}")
