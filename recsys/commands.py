"""Registers the CLI subcommands that live in other modules."""

from __future__ import annotations

from recsys import models_cli as _models  # noqa: F401
from recsys.evaluation import cli as _evaluation  # noqa: F401
from recsys.importers import cli as _importers  # noqa: F401
from recsys.tuning import cli as _tuning  # noqa: F401
