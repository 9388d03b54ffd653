"""Offline evaluation: splits, ranking metrics and dataset readers.

``splits`` and ``metrics`` reproduce the definitions of the Recommenders library
(recommenders-team/recommenders) so our numbers can be compared with its published benchmark;
``datasets`` reads MovieLens 100K and the bundled Online Retail file straight into
``InteractionData`` (no SQL store needed, so benchmarks stay fast).
"""

# The notebook API: ``from recsys.offline.evaluation import evaluate``. Imported lazily so that
# reading a dataset or a metric does not pull in the request path and every strategy.
__all__ = ["evaluate"]


def __getattr__(name: str):
    if name == "evaluate":
        from recsys.offline.evaluation.runner import evaluate

        return evaluate
    raise AttributeError(f"module 'recsys.offline.evaluation' has no attribute {name!r}")
