"""The recommender: route -> candidates per strategy -> blend -> rules -> page.

Pure of Flask, SQL and Redis: the serving pipeline, the offline evaluation and the tuner all call
the same ``Recommender``, with models from the runtime or in memory."""
