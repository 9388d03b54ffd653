"""Self-tuning: search the routes, blend and strategy hyperparameters on a store's own data.

* ``recsys.offline.tuning.search``: the search (``tune``, ``Tuner``), composing
  ``options`` (``TuneOptions``, the budget), ``spaces`` (hyperparameter spaces), ``folds``
  (validation slices), ``guard`` (the statistical tests), ``hyper`` (hyperparameters),
  ``routes`` (routes and blends) and ``trace`` (studies and their trace).
* ``recsys.models.profile``: the result, a versioned ``ServingProfile``, and how it is stored
  in the model repository, activated, rolled back and merged into the serving configuration.
* ``recsys.cli.tune``: ``recsys tune`` and ``recsys profiles ...``.
"""

from recsys.models.profile import ServingProfile
from recsys.offline.tuning.options import TuneOptions
from recsys.offline.tuning.search import tune

__all__ = ["ServingProfile", "TuneOptions", "tune"]
