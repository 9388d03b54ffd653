"""The hyperparameter search spaces: one per strategy, with the trial values that reproduce the
strategy's shipped defaults (enqueued first, so a search starts from what is served today).

Each space maps an Optuna trial to the strategy's ``__init__`` kwargs. Ranges are wide and,
where a parameter has a natural scale in the data (popularity's half-life: the data's time
span), relative to it (``DataStats``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from features.interactions import InteractionData


@dataclass
class DataStats:
    """What the spaces scale by: the data's time span (days) and size."""

    span_days: float
    n_users: int
    n_items: int

    @classmethod
    def of(cls, data: InteractionData) -> DataStats:
        """The statistics of ``data``.

        Parameters
        ----------
        data : InteractionData
            The events.

        Returns
        -------
        DataStats
            Span in days (at least one hour; 1.0 for no events), users and items.
        """
        span = float(data.ts.max() - data.ts.min()) / 86400.0 if len(data) else 1.0
        return cls(max(span, 1.0 / 24), data.n_users, data.n_items)

    def half_life_range(self) -> tuple[float, float]:
        """The search range of popularity's half-life.

        Returns
        -------
        tuple[float, float]
            ``(low, high)`` in days: from span / 2000 (at least one hour) to twice the span (at
            least one day).
        """
        return max(self.span_days / 2000.0, 1.0 / 24), max(self.span_days * 2.0, 1.0)


def _popular_space(trial, stats: DataStats) -> dict[str, Any]:
    if trial.suggest_categorical("decay", [True, False]):
        lo, hi = stats.half_life_range()
        return {"half_life_days": trial.suggest_float("half_life_days", lo, hi, log=True)}
    return {"half_life_days": None}


def _popular_defaults(stats: DataStats) -> list[dict[str, Any]]:
    lo, hi = stats.half_life_range()
    return [{"decay": True, "half_life_days": min(max(7.0, lo), hi)}, {"decay": False}]


def _als_space(trial, _stats: DataStats) -> dict[str, Any]:
    return {
        "factors": trial.suggest_categorical("factors", [16, 32, 64, 128]),
        "regularization": trial.suggest_float("regularization", 0.01, 100.0, log=True),
        "alpha": trial.suggest_float("alpha", 0.1, 100.0, log=True),
        "binary": trial.suggest_categorical("binary", [True, False]),
    }


def _bpr_space(trial, _stats: DataStats) -> dict[str, Any]:
    return {
        "factors": trial.suggest_categorical("factors", [32, 64, 128]),
        "learning_rate": trial.suggest_float("learning_rate", 0.003, 0.1, log=True),
        "regularization": trial.suggest_float("regularization", 1e-4, 0.1, log=True),
        "iterations": trial.suggest_int("iterations", 20, 200, step=20),
    }


def _ease_space(trial, _stats: DataStats) -> dict[str, Any]:
    return {"l2": trial.suggest_float("l2", 1.0, 20000.0, log=True)}


def _content_space(trial, _stats: DataStats) -> dict[str, Any]:
    return {
        "category_repeat": trial.suggest_int("category_repeat", 0, 3),
        "ngram_max": trial.suggest_int("ngram_max", 1, 2),
        "recency_half_life": trial.suggest_float("recency_half_life", 1.0, 200.0, log=True),
    }


def _deep_space(trial, _stats: DataStats) -> dict[str, Any]:
    return {
        "hidden": [int(trial.suggest_categorical("hidden", ["200", "600"]))],
        "dropout": trial.suggest_float("dropout", 0.2, 0.8),
        "lr": trial.suggest_float("lr", 3e-4, 3e-3, log=True),
        "max_steps": trial.suggest_int("max_steps", 100, 800, step=50),
    }


def _fixed(*values: dict[str, Any]) -> Callable[[DataStats], list[dict[str, Any]]]:
    return lambda _stats: list(values)


# name -> (the space: trial -> __init__ kwargs, the trial values that reproduce the shipped
# defaults, enqueued first). One table, so a strategy's space and its defaults sit together.
SPACES: dict[str, tuple[Callable, Callable[[DataStats], list[dict[str, Any]]]]] = {
    "popular": (_popular_space, _popular_defaults),
    "als": (
        _als_space,
        _fixed({"factors": 32, "regularization": 15.0, "alpha": 1.0, "binary": True}),
    ),
    "bpr": (
        _bpr_space,
        _fixed({"factors": 64, "learning_rate": 0.01, "regularization": 0.01, "iterations": 60}),
    ),
    "ease": (_ease_space, _fixed({"l2": 500.0})),
    "content": (
        _content_space,
        _fixed({"category_repeat": 2, "ngram_max": 1, "recency_half_life": 10.0}),
    ),
    "deep": (
        _deep_space,
        _fixed({"hidden": "600", "dropout": 0.5, "lr": 1e-3, "max_steps": 400}),
    ),
}
# The strategies searched beyond their defaults. Any other (e.g. the opt-in sequence model,
# minutes per fit) is fitted once with its defaults: further trials would repeat that fit.
SEARCHED = tuple(SPACES)


def suggest(name: str, trial, stats: DataStats) -> dict[str, Any]:
    """The ``__init__`` kwargs of ``name`` that ``trial`` suggests from its space.

    Parameters
    ----------
    name : str
        Strategy name.
    trial : optuna.Trial
        The trial.
    stats : DataStats
        What the space scales by.

    Returns
    -------
    dict[str, Any]
        Keyword arguments for the strategy's class; empty for a strategy with no space.
    """
    entry = SPACES.get(name)
    return entry[0](trial, stats) if entry else {}  # no declared space: its defaults only


def default_trials(name: str, stats: DataStats) -> list[dict[str, Any]]:
    """Trial values reproducing the shipped defaults (and for popularity, no decay too).

    Parameters
    ----------
    name : str
        Strategy name.
    stats : DataStats
        What the space scales by.

    Returns
    -------
    list[dict[str, Any]]
        Trial parameter dicts to enqueue; ``[{}]`` for a strategy with no space.
    """
    entry = SPACES.get(name)
    return entry[1](stats) if entry else [{}]
