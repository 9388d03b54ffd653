"""The run's Optuna studies: how they are made (seeded TPE, maximising, kept in an Optuna
storage for inspection if one is given) and how each is written into the profile's trace;
and the labels of history ranges that name bins and routes there."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


def _stamp() -> str:
    return datetime.now(UTC).strftime("tune-%Y%m%dT%H%M%SZ")


@dataclass
class Studies:
    """Makes the studies of one run: a TPE sampler seeded with ``seed``; with ``storage`` (an
    Optuna storage URL) each is kept there as ``<prefix>:<name>``."""

    seed: int
    storage: str | None = None
    prefix: str = field(default_factory=_stamp)

    def new(self, name: str, pruner=None):
        """A new study of this run.

        Parameters
        ----------
        name : str
            The study's name (after the run's prefix, in the storage).
        pruner : optuna.pruners.BasePruner or None
            Its pruner; None: Optuna's default.

        Returns
        -------
        optuna.Study
            Maximising, with a seeded multivariate TPE sampler.
        """
        import optuna

        return optuna.create_study(
            direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=self.seed, multivariate=True),
            pruner=pruner,
            storage=self.storage,
            study_name=f"{self.prefix}:{name}" if self.storage else None,
        )


def study_trace(study, keep_trials: bool = True) -> dict[str, Any]:
    """A study for the trace: trials (and pruned ones), the best and first values, the best
    trial's kwargs and, with ``keep_trials``, every trial.

    Parameters
    ----------
    study : optuna.Study
        The study.
    keep_trials : bool
        Include every trial (``history``).

    Returns
    -------
    dict[str, Any]
        ``trials``, ``pruned``; with a completed trial ``best_value``, ``best_params`` and
        ``first_value`` (6 decimals); with ``keep_trials`` ``history``.
    """
    import optuna

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    out: dict[str, Any] = {
        "trials": len(study.trials),
        "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials),
    }
    if done:
        best = max(done, key=lambda t: t.value)
        out["best_value"] = round(float(best.value), 6)
        out["best_params"] = best.user_attrs.get("kwargs", best.params)
        out["first_value"] = round(float(done[0].value), 6)
    if keep_trials:
        out["history"] = [
            {
                "n": t.number,
                "value": None if t.value is None else round(float(t.value), 6),
                "params": t.user_attrs.get("kwargs", t.params),
                "seconds": t.user_attrs.get("seconds"),
                "state": t.state.name.lower(),
            }
            for t in study.trials
        ]
    return out


def bin_label(lo: int, hi: int | None) -> str:
    """History lengths ``lo..hi`` (inclusive; None = no bound): ``"3-5"``, ``"0"``, ``"6+"``.

    Parameters
    ----------
    lo : int
        Shortest history length of the range.
    hi : int or None
        Longest (inclusive); None: no bound.

    Returns
    -------
    str
        The label.
    """
    if hi is None:
        return f"{lo}+"
    return f"{lo}" if hi == lo else f"{lo}-{hi}"
