"""recsys: a recommendation-serving service."""

from recsys.app import create_app

__all__ = ["create_app"]
__version__ = "0.1.0"
