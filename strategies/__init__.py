"""Recommendation strategies. Each implements strategies.base.Strategy.

The registry imports strategy modules lazily, so serving a model does not import torch unless
the deep strategy is actually used.
"""

from __future__ import annotations

import functools
import importlib
import logging
import pkgutil
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from strategies.base import Strategy

log = logging.getLogger(__name__)


def _discover() -> tuple[str, ...]:
    """The strategy modules of this package, by file name (``popular.py`` -> ``"popular"``),
    found without importing them: adding a strategy is adding its module (and its class's
    ``name`` equal to the file name); nothing is listed anywhere else."""
    return tuple(
        sorted(
            m.name
            for m in pkgutil.iter_modules(__path__)
            if not m.ispkg and not m.name.startswith("_") and m.name != "base"
        )
    )


STRATEGY_NAMES = _discover()


def get_strategy_class(name: str) -> type[Strategy]:
    """The class registered under ``name`` (imported on first use).

    Parameters
    ----------
    name : str
        A strategy name (one of ``STRATEGY_NAMES``).

    Returns
    -------
    type of Strategy
        The one ``Strategy`` subclass of ``strategies/<name>.py`` whose ``name`` is ``name``.

    Raises
    ------
    ValueError
        For an unknown name, a strategy whose module cannot be imported, or a module that does
        not define exactly one such class.
    """
    if name not in STRATEGY_NAMES:
        raise ValueError(
            f"unknown strategy {name!r}; known strategies: {', '.join(STRATEGY_NAMES)}"
        )
    try:
        module = importlib.import_module(f"{__name__}.{name}")
    except ImportError as e:
        raise ValueError(f"strategy {name!r} is not available: {e}") from e
    from strategies.base import Strategy

    found = [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type)
        and issubclass(obj, Strategy)
        and obj.__module__ == module.__name__
        and obj.name == name
    ]
    if len(found) != 1:
        raise ValueError(f"strategies/{name}.py must define one Strategy class named {name!r}")
    return found[0]


def available_strategies(candidates: Sequence[str] = STRATEGY_NAMES) -> list[str]:
    """Names in ``candidates`` whose module imports here (e.g. ``deep`` may be absent).

    Parameters
    ----------
    candidates : sequence of str
        Strategy names to try (default: ``STRATEGY_NAMES``).

    Returns
    -------
    list of str
        The importable names, in the order of ``candidates``.
    """
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
def opt_in(name: str) -> bool:
    """``Strategy.opt_in`` of strategy ``name``: trained and tuned only when named.

    Parameters
    ----------
    name : str
        A strategy name.

    Returns
    -------
    bool
        False for a name that is unknown or cannot be imported. Cached per name.
    """
    try:
        return bool(get_strategy_class(name).opt_in)
    except ValueError:
        return False


@functools.cache
def scores_empty_history(name: str) -> bool:
    """``Strategy.scores_empty_history`` of strategy ``name``.

    Parameters
    ----------
    name : str
        A strategy name.

    Returns
    -------
    bool
        True for a name this package does not know (e.g. a test's own strategy) or one that
        cannot be imported here. Cached per name.
    """
    try:
        return bool(get_strategy_class(name).scores_empty_history)
    except ValueError:
        return True
