"""Self-tuning: search the routes, blend and strategy hyperparameters on a store's own data.

* ``recsys.tuning.search``: the search (``tune``), validation slices, the guard.
* ``recsys.tuning.profile``: the result, a versioned ``ServingProfile``, and how it is stored
  in the model repository, activated, rolled back and merged into the serving configuration.
* ``recsys.tuning.cli``: ``recsys tune`` and ``recsys profiles ...``.
"""

from recsys.tuning.profile import ServingProfile
from recsys.tuning.search import TuneOptions, tune

__all__ = ["ServingProfile", "TuneOptions", "tune"]
