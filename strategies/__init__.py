"""Recommendation strategies. Each implements strategies.base.Strategy.

The registry imports strategy modules lazily, so serving a model does not import torch unless
the deep strategy is actually used.
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from strategies.base import Strategy

log = logging.getLogger(__name__)

STRATEGY_NAMES = ("popular", "content", "als", "bpr", "ease", "deep", "sequence")
# Trained by `recsys train` only when named: no route uses them by default and their CPU fit
# takes minutes (the sequence model: ~6 min on Online Retail on the 2-core VM), which `make run`
# would otherwise pay on every fresh machine.
OPT_IN = ("sequence",)

# name -> (module, class)
_CLASSES = {
    "popular": ("strategies.popular", "PopularStrategy"),
    "content": ("strategies.content", "ContentStrategy"),
    "als": ("strategies.als", "ALSStrategy"),
    "bpr": ("strategies.bpr", "BPRStrategy"),
    "ease": ("strategies.ease", "EASEStrategy"),
    "deep": ("strategies.deep", "DeepStrategy"),
    "sequence": ("strategies.sequence", "SequenceStrategy"),
}


def get_strategy_class(name: str) -> type[Strategy]:
    """The class registered under ``name`` (imported on first use).

    Raises ValueError for an unknown name or a strategy whose module cannot be imported.
    """
    try:
        module_name, class_name = _CLASSES[name]
    except KeyError:
        raise ValueError(
            f"unknown strategy {name!r}; known strategies: {', '.join(STRATEGY_NAMES)}"
        ) from None
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"strategy {name!r} is not available: {e}") from e
    return getattr(module, class_name)


def available_strategies(candidates: Sequence[str] = STRATEGY_NAMES) -> list[str]:
    """Names in ``candidates`` whose module imports here (e.g. ``deep`` may be absent)."""
    names = []
    for name in candidates:
        try:
            get_strategy_class(name)
        except ValueError as e:
            log.info("strategy %s unavailable: %s", name, e)
            continue
        names.append(name)
    return names


@functools.cache
def scores_empty_history(name: str) -> bool:
    """``Strategy.scores_empty_history`` of strategy ``name`` (True for a name this package
    does not know, e.g. a test's own strategy, or one that cannot be imported here)."""
    try:
        return bool(get_strategy_class(name).scores_empty_history)
    except ValueError:
        return True
