"""Offline evaluation: splits, ranking metrics and dataset readers.

``splits`` and ``metrics`` reproduce the definitions of the Recommenders library
(recommenders-team/recommenders) so our numbers can be compared with its published benchmark;
``datasets`` reads MovieLens 100K and the bundled Online Retail file straight into
``InteractionData`` (no SQL store needed, so benchmarks stay fast).
"""
