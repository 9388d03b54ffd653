"""``recsys train als --engine spark``: fit on Spark from the events table, save a version.

The Spark counterpart of ``recsys.offline.training.train_strategies``: the same steps (time holdout
fit and metrics, fit on all events, save, activate or gate) and the same ``TrainResult``, with the
data never gathered into this process:

* events come from PostgreSQL over JDBC (``features.spark.read_events``), weighted and summed
  per cell in Spark SQL, and ALS is fitted by ``pyspark.ml`` (``ALSStrategy.fit_spark``);
* only id lists and factors come back: the item IdMap (the catalogue ordered by row id, as
  ``recsys.store.training_data.load_interactions`` builds it), the user IdMap (users with
  events ordered by
  row id, likewise) and the item factors, O(items + users);
* the version is written by ``ModelRepository.save_version`` like any other (same files,
  checksums and SQL row), so serving, hot swap, rollback and evaluation need nothing new.

Holdout: the cutoff is the in-process one (``recsys.offline.evaluation.splits.time_split``: the
newest ``holdout`` share of events by time), computed in Spark. The metrics are computed by the same
``recsys.offline.training.holdout_metrics`` on the events of the evaluated users only (at most
``MAX_EVAL_USERS``, a seeded sample, as in-process): ranking metrics are per user and so the
same; item-popularity-based ones (novelty) count those users' training events only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from features.idmap import IdMap
from features.interactions import EVENT_CODE, EVENT_TYPES, InteractionData
from recsys.errors import ModelError
from recsys.models.repository import ModelRepository
from recsys.offline.training import (
    DEFAULT_HOLDOUT,
    MAX_EVAL_USERS,
    TrainResult,
    holdout_metrics,
    version_result,
)

log = logging.getLogger(__name__)

# Strategies the Spark engine trains (ALS: pyspark.ml; popularity: a Spark SQL aggregation).
# The others stay single-machine (docs/scale.md): EASE
# inverts an items x items matrix (bounded by the catalogue, not by users or events, and a dense
# inverse does not distribute), content works per item on text, BPR/deep/sequence are sampled
# stochastic-gradient models whose training loops live in implicit and torch.
SPARK_STRATEGIES = ("als", "popular")


def _iso(ts: int | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(int(ts), UTC).isoformat()


def _empty(users: IdMap, items: IdMap, info: dict[str, Any]) -> InteractionData:
    """What the repository records of the training data (id maps and counts), no events."""
    z = np.zeros(0, np.int32)
    return InteractionData(
        users=users,
        items=items,
        user_idx=z,
        item_idx=z,
        event_type=np.zeros(0, np.int8),
        value=np.zeros(0, np.float32),
        ts=np.zeros(0, np.int64),
        info=info,
    )


def _snapshot(events, n_users: int, n_items: int) -> dict[str, Any]:
    from pyspark.sql import functions as F

    counts = events.groupBy("type").agg(F.count("*").alias("n")).collect()
    by_type = {r["type"]: int(r["n"]) for r in counts}
    span = events.agg(F.min("ts").alias("lo"), F.max("ts").alias("hi")).collect()[0]
    return {
        "users": n_users,
        "items": n_items,
        "events": int(sum(by_type.values())),
        "events_by_type": {t: by_type[t] for t in EVENT_TYPES if by_type.get(t)},
        "ts_min": _iso(span["lo"]),
        "ts_max": _iso(span["hi"]),
    }


def _id_maps(spark, jdbc, events) -> tuple[np.ndarray, IdMap, IdMap]:
    """(item row ids, item IdMap, user IdMap), as
    ``recsys.store.training_data.load_interactions``."""

    from features.spark import jdbc_query

    items = jdbc_query(spark, jdbc, "SELECT id, external_id FROM items").orderBy("id").collect()
    item_rows = np.fromiter((r["id"] for r in items), dtype=np.int64, count=len(items))
    users_tab = jdbc_query(spark, jdbc, "SELECT id AS user_id, external_id FROM users")
    with_events = events.select("user_id").distinct()
    users = (
        users_tab.join(with_events, "user_id").orderBy("user_id").select("external_id").collect()
    )
    return (
        item_rows,
        IdMap(r["external_id"] for r in items),
        IdMap(r["external_id"] for r in users),
    )


def time_cutoff(events, fraction: float) -> int | None:
    """``time_split``'s cutoff: the smallest timestamp among the newest ``fraction`` of
    events (None: no event would be held out).

    Parameters
    ----------
    events : pyspark.sql.DataFrame
        The events, with a ``ts`` column (Unix seconds).
    fraction : float
        Share of the events, the newest, to hold out, in (0, 1).

    Returns
    -------
    int or None
        The cutoff, in Unix seconds.
    """
    from pyspark.sql import functions as F

    n = events.count()
    n_test = int(round(fraction * n))
    if not n_test:
        return None
    newest = events.select("ts").orderBy(F.desc("ts")).limit(n_test)
    return int(newest.agg(F.min("ts")).collect()[0][0])


def _eval_sample(events, cutoff: int, item_rows: np.ndarray, items: IdMap, seed: int = 42):
    """The holdout's evaluated users' events as (train, test) InteractionData over the full
    item IdMap: users with a positive test item new to them, at most MAX_EVAL_USERS."""
    from pyspark.sql import functions as F

    from features.spark import weighted_cells

    train_cells = weighted_cells(events.where(F.col("ts") < cutoff)).select("user_id", "item_id")
    test_cells = weighted_cells(events.where(F.col("ts") >= cutoff)).select("user_id", "item_id")
    new = test_cells.join(train_cells, ["user_id", "item_id"], "left_anti")
    candidates = np.asarray(
        sorted(r[0] for r in new.select("user_id").distinct().collect()), dtype=np.int64
    )
    if len(candidates) > MAX_EVAL_USERS:
        rng = np.random.default_rng(seed)
        candidates = np.sort(rng.choice(candidates, MAX_EVAL_USERS, replace=False))
    spark = events.sparkSession
    chosen = spark.createDataFrame([(int(u),) for u in candidates], "user_id long")
    rows = (
        events.join(F.broadcast(chosen), "user_id")
        .select("user_id", "item_id", "type", "value", "ts", "id")
        .orderBy("id")
        .collect()
    )
    n = len(rows)
    user_row = np.fromiter((r[0] for r in rows), dtype=np.int64, count=n)
    item_row = np.fromiter((r[1] for r in rows), dtype=np.int64, count=n)
    codes = np.fromiter((EVENT_CODE.get(r[2], -1) for r in rows), dtype=np.int8, count=n)
    value = np.fromiter((r[3] for r in rows), dtype=np.float32, count=n)
    ts = np.fromiter((r[4] for r in rows), dtype=np.int64, count=n)
    keep = codes >= 0
    uniq, user_idx = np.unique(user_row[keep], return_inverse=True)
    data = InteractionData(
        users=IdMap(str(u) for u in uniq),
        items=items,
        user_idx=user_idx.astype(np.int32),
        item_idx=np.searchsorted(item_rows, item_row[keep]).astype(np.int32),
        event_type=codes[keep],
        value=value[keep],
        ts=ts[keep],
    )
    before = data.ts < cutoff
    return data.subset(before), data.subset(~before)


def train_spark(
    database_url: str,
    repo: ModelRepository,
    names: Sequence[str],
    params: dict[str, dict[str, Any]] | None = None,
    holdout: float = DEFAULT_HOLDOUT,
    activate: bool = True,
    gate_metric: str | None = None,
    master: str | None = None,
    actor: str = "cli",
    on_result: Callable[[TrainResult], None] | None = None,
) -> list[TrainResult]:
    """Train each named strategy (``SPARK_STRATEGIES``) on Spark; as ``train_strategies``.

    Raises ``ValueError`` for a strategy the engine does not train and
    ``features.spark.SparkUnavailable`` when pyspark, Java, the JDBC driver or PostgreSQL is
    missing.

    Parameters
    ----------
    database_url : str
        SQLAlchemy URL of the PostgreSQL store (read over JDBC).
    repo : ModelRepository
        Where versions are saved (and activated).
    names : Sequence[str]
        Strategy names, among ``SPARK_STRATEGIES``.
    params : dict[str, dict[str, Any]] or None
        Strategy name -> hyperparameters; None: the defaults.
    holdout : float
        Newest share of events held out for evaluation, in [0, 1); 0 skips the evaluation.
    activate : bool
        Activate each new version (behind the gate).
    gate_metric : str or None
        Holdout metric a new version must not be worse on than the active one; None: no gate.
    master : str or None
        Spark master URL; None: ``features.spark.get_session``'s default.
    actor : str
        Who trained, recorded in the model store and the activation audit.
    on_result : Callable[[TrainResult], None] or None
        Called with each result as soon as it is ready; None: not called.

    Returns
    -------
    list[TrainResult]
        One per name, in order.

    Raises
    ------
    ModelError
        409 when the store has no events.
    """
    from features.spark import get_session, jdbc_from_sqlalchemy, read_events

    bad = [n for n in names if n not in SPARK_STRATEGIES]
    if bad:
        raise ValueError(
            f"--engine spark trains {', '.join(SPARK_STRATEGIES)} only, not {', '.join(bad)} "
            "(those stay single-machine: see docs/scale.md)"
        )
    params = params or {}
    jdbc = jdbc_from_sqlalchemy(database_url)
    spark = get_session(master)
    t0 = time.perf_counter()
    events = read_events(spark, jdbc).cache()
    item_rows, items, users = _id_maps(spark, jdbc, events)
    info = _snapshot(events, len(users), len(items))
    if not info["events"]:
        events.unpersist()
        raise ModelError("the store has no events to train on; import some first", 409)
    read_s = time.perf_counter() - t0
    log.info("spark: %d events, %d users, %d items read in %.1fs", info["events"],
             len(users), len(items), read_s)  # fmt: skip
    cutoff = time_cutoff(events, holdout) if holdout > 0 else None
    meta: list = []

    def fit_extra(name: str) -> dict[str, Any]:
        if name != "popular":
            return {}
        if not meta:  # the catalogue's categories (per-category lists), catalogue-sized
            from recsys.store.db import make_engine
            from recsys.store.training_data import load_catalog

            engine = make_engine(database_url)
            try:
                meta.append(load_catalog(engine)[1])
            finally:
                engine.dispose()
        return {"item_meta": meta[0]}

    results = []
    try:
        for name in names:
            cls = repo.resolver(name)
            kwargs = dict(params.get(name, {}))
            if name == "als":
                kwargs["engine"] = "spark"
            timings: dict[str, float] = {"read": read_s}
            metrics: dict[str, Any] = {}
            if cutoff is not None:
                t = time.perf_counter()
                train_ev = events.where(events.ts < cutoff)
                model = cls(**kwargs).fit_spark(train_ev, item_rows, **fit_extra(name))
                timings["holdout_fit"] = time.perf_counter() - t
                t = time.perf_counter()
                train, test = _eval_sample(events, cutoff, item_rows, items)
                metrics = holdout_metrics(model, train, test)
                timings["evaluate"] = time.perf_counter() - t
                if metrics:
                    metrics["holdout"] = {
                        "protocol": "time",
                        "fraction": holdout,
                        "cutoff": _iso(cutoff),
                        "train_events": int(events.where(events.ts < cutoff).count()),
                        "test_events": int(events.where(events.ts >= cutoff).count()),
                        "users": "evaluated users' events only (see recsys.offline.training_spark)",
                    }
                del model
            t = time.perf_counter()
            model = cls(**kwargs).fit_spark(events, item_rows, **fit_extra(name))
            timings["fit"] = time.perf_counter() - t
            fitted = getattr(model, "spark_", {})
            metrics["training"] = {
                "engine": "spark",
                "master": spark.sparkContext.master,
                **{k: v for k, v in fitted.items() if k in ("regParam", "alpha")},
            }
            t = time.perf_counter()
            version = repo.save_version(model, _empty(users, items, info), metrics, actor=actor)
            timings["save"] = time.perf_counter() - t
            result = version_result(
                repo, name, version, metrics, timings, activate, actor, gate_metric
            )
            log.info("trained %s on spark, version %s in %.1fs", name, version, timings["fit"])
            results.append(result)
            if on_result is not None:
                on_result(result)
    finally:
        events.unpersist()
    return results
