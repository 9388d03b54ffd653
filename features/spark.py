"""Training data in Apache Spark: the events table over JDBC, weighted in Spark SQL.

The Spark counterpart of ``recsys.store.training_data`` + ``InteractionData.matrix``:
``read_events`` reads
the events table straight from PostgreSQL (a JDBC read split by ``events.id`` ranges; the
Python process never holds the event table), ``weighted_cells`` weights and sums them per
user-item cell in Spark SQL with the same weight table as the in-process path
(``features.interactions.DEFAULT_WEIGHTS`` updated by a strategy's ``weights``).
``events_from_data`` turns data already in Python (the evaluation's files) into the same frame.

pyspark is an optional extra (``pip install -e '.[spark]'``); Java comes from the system
(Debian: ``openjdk-17-jre-headless``), the PostgreSQL JDBC driver from ``libpostgresql-jdbc-java``
(``/usr/share/java/postgresql.jar``, or ``RECSYS_JDBC_JAR``).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass

import numpy as np

from features.interactions import DEFAULT_WEIGHTS, EVENT_TYPES

log = logging.getLogger(__name__)

DEFAULT_MASTER = "local[2]"
JDBC_JAR = "/usr/share/java/postgresql.jar"

_session_lock = threading.Lock()
_session = None
_session_master: str | None = None


class SparkUnavailable(ValueError):
    """pyspark, Java or the JDBC driver is missing, or the store is not PostgreSQL. A
    ValueError so the CLI commands (train, evaluate) report it as a message, not a trace.
    """


def require_pyspark() -> None:
    """Check that pyspark can be imported.

    Raises
    ------
    SparkUnavailable
        If it cannot (the message says how to install it).
    """
    try:
        import pyspark  # noqa: F401
    except ImportError as e:
        raise SparkUnavailable(
            "the Spark engine needs pyspark: pip install -e '.[spark]' (and Java 17, e.g. "
            "apt-get install openjdk-17-jre-headless)"
        ) from e


def jdbc_jar() -> str:
    """Path of the PostgreSQL JDBC driver jar.

    Returns
    -------
    str
        ``RECSYS_JDBC_JAR`` when set, else ``JDBC_JAR``.
    """
    return os.environ.get("RECSYS_JDBC_JAR") or JDBC_JAR


def get_session(master: str | None = None):
    """The process's one SparkSession (created on first use; a different master stops the old
    one first).

    Parameters
    ----------
    master : str, optional
        Spark master URL; ``None``: ``RECSYS_SPARK_MASTER`` or ``local[2]``.

    Returns
    -------
    pyspark.sql.SparkSession

    Raises
    ------
    SparkUnavailable
        If pyspark is missing or Spark cannot start (no Java, say).
    """
    global _session, _session_master
    require_pyspark()
    master = master or os.environ.get("RECSYS_SPARK_MASTER") or DEFAULT_MASTER
    with _session_lock:
        if _session is not None and _session_master == master:
            return _session
        if _session is not None:
            _session.stop()
            _session = None
        from pyspark.sql import SparkSession

        builder = (
            SparkSession.builder.master(master)
            .appName("recsys-train")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            # Small default; a cluster's spark-defaults.conf or SPARK_CONF overrides it.
            .config("spark.sql.shuffle.partitions", os.environ.get("RECSYS_SPARK_PARTITIONS", "8"))
        )
        if master.startswith("local"):
            # Everything in this process: stay on loopback (no listening on other interfaces).
            os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
            builder = (
                builder.config("spark.driver.bindAddress", "127.0.0.1")
                .config("spark.driver.host", "127.0.0.1")
                # local mode runs the executors in the driver's JVM: Spark's 1g default ran
                # out of heap on ALS at 1M users (issue 29's L)
                .config("spark.driver.memory", local_driver_memory())
            )
        jar = jdbc_jar()
        if os.path.isfile(jar):
            builder = builder.config("spark.jars", jar)
        try:
            _session = builder.getOrCreate()
        except Exception as e:  # Java missing or broken: say so instead of a py4j trace
            raise SparkUnavailable(f"cannot start Spark (master {master}): {e}") from e
        _session.sparkContext.setLogLevel("WARN")
        _session_master = master
        return _session


def local_driver_memory() -> str:
    """The JVM heap of a ``local[N]`` session: ``RECSYS_SPARK_DRIVER_MEMORY`` (Spark's syntax,
    e.g. ``8g``), else a quarter of the machine's memory (at least 1g).

    Returns
    -------
    str
        A Spark memory size.
    """
    from features.machine import machine_memory_bytes

    given = os.environ.get("RECSYS_SPARK_DRIVER_MEMORY")
    if given:
        return given
    total = machine_memory_bytes()  # a container's cgroup limit where lower
    return f"{max(1, total // 4 // 2**30)}g" if total else "1g"


def stop_session() -> None:
    """Stop the process's SparkSession, if one was started.

    The next ``get_session`` makes a new one.
    """
    global _session, _session_master
    with _session_lock:
        if _session is not None:
            _session.stop()
        _session, _session_master = None, None


# -- reading the store --------------------------------------------------------------------------
@dataclass(frozen=True)
class Jdbc:
    """A JDBC connection: what ``spark.read.jdbc`` takes.

    Parameters
    ----------
    url : str
        ``jdbc:postgresql://host:port/db``.
    properties : dict of str to str
        Driver class, user and (where set) password.
    """

    url: str
    properties: dict[str, str]


def jdbc_from_sqlalchemy(database_url: str) -> Jdbc:
    """``postgresql+psycopg://user:pw@host:port/db`` -> JDBC URL and connection properties.

    Parameters
    ----------
    database_url : str
        A SQLAlchemy URL.

    Returns
    -------
    Jdbc

    Raises
    ------
    SparkUnavailable
        If the URL is not PostgreSQL or the JDBC driver jar is missing.
    """
    from sqlalchemy.engine import make_url

    u = make_url(database_url)
    if u.get_backend_name() != "postgresql":
        raise SparkUnavailable(
            f"--engine spark reads events over JDBC from PostgreSQL; the store is "
            f"{u.get_backend_name()} (set RECSYS_DATABASE_URL to a PostgreSQL URL)"
        )
    if not os.path.isfile(jdbc_jar()):
        raise SparkUnavailable(
            f"PostgreSQL JDBC driver not found at {jdbc_jar()} (apt-get install "
            "libpostgresql-jdbc-java, or set RECSYS_JDBC_JAR)"
        )
    host = u.host or "localhost"
    port = u.port or 5432
    props = {"driver": "org.postgresql.Driver", "user": u.username or ""}
    if u.password:
        props["password"] = str(u.password)
    return Jdbc(f"jdbc:postgresql://{host}:{port}/{u.database or ''}", props)


def jdbc_query(spark, jdbc: Jdbc, sql: str):
    """The rows of one SQL query over JDBC.

    Parameters
    ----------
    spark : pyspark.sql.SparkSession
    jdbc : Jdbc
        Connection.
    sql : str
        A SELECT statement (used as a subquery).

    Returns
    -------
    pyspark.sql.DataFrame
    """
    return spark.read.jdbc(jdbc.url, f"({sql}) AS q", properties=jdbc.properties)


def read_events(spark, jdbc: Jdbc, partitions: int | None = None):
    """The events table as a DataFrame, read in parallel by ranges of ``events.id``.

    Parameters
    ----------
    spark : pyspark.sql.SparkSession
    jdbc : Jdbc
        Connection to the store.
    partitions : int, optional
        JDBC read partitions; ``None``: the context's default parallelism (at least 2).

    Returns
    -------
    pyspark.sql.DataFrame
        Columns id, user_id, item_id, type (str), value, ts (unix seconds); one partition when
        the table is empty.
    """
    bounds = jdbc_query(
        spark, jdbc, "SELECT min(id) AS lo, max(id) AS hi, count(*) AS n FROM events"
    ).collect()[0]
    sql = (
        "SELECT id, user_id, item_id, type, value, "
        "CAST(EXTRACT(EPOCH FROM ts) AS BIGINT) AS ts FROM events"
    )
    if bounds["n"] == 0:
        return jdbc_query(spark, jdbc, sql)
    parts = partitions or max(2, spark.sparkContext.defaultParallelism)
    return spark.read.jdbc(
        jdbc.url,
        f"({sql}) AS ev",
        column="id",
        lowerBound=int(bounds["lo"]),
        upperBound=int(bounds["hi"]) + 1,
        numPartitions=parts,
        properties=jdbc.properties,
    )


def events_from_data(spark, data):
    """An ``InteractionData`` (the evaluation's file data, already in Python) as the same event
    frame ``read_events`` gives, ids being its indices, so the same Spark SQL weights it.

    Parameters
    ----------
    spark : pyspark.sql.SparkSession
    data : InteractionData
        The events.

    Returns
    -------
    pyspark.sql.DataFrame
        Columns user_id (int, the user index), item_id (int, the item index), type (str),
        value (double), ts (long, unix seconds).
    """
    from pyspark.sql.types import (
        DoubleType,
        IntegerType,
        LongType,
        StringType,
        StructField,
        StructType,
    )

    schema = StructType(
        [
            StructField("user_id", IntegerType(), False),
            StructField("item_id", IntegerType(), False),
            StructField("type", StringType(), False),
            StructField("value", DoubleType(), False),
            StructField("ts", LongType(), False),
        ]
    )
    names = np.asarray(EVENT_TYPES, dtype=object)[data.event_type.astype(np.int64)]
    rows = list(
        zip(
            data.user_idx.tolist(),
            data.item_idx.tolist(),
            names.tolist(),
            data.value.astype(np.float64).tolist(),
            data.ts.tolist(),
            strict=True,
        )
    )
    return spark.createDataFrame(rows, schema)


# -- features in Spark SQL ----------------------------------------------------------------------
def weight_sql(weights: dict[str, float] | None = None) -> str:
    """The per-event weight as a Spark SQL expression over ``type`` and ``value``: exactly
    ``features.interactions.event_weights`` (ratings weigh their value times the rating weight;
    unknown types weigh 0).

    Parameters
    ----------
    weights : dict of str to float, optional
        Event-type weights overriding ``DEFAULT_WEIGHTS``; ``None``: the defaults.

    Returns
    -------
    str
        A ``CASE type ... END`` expression.
    """
    table = dict(DEFAULT_WEIGHTS)
    if weights:
        table.update(weights)
    whens = []
    for t in EVENT_TYPES:
        w = float(table[t])
        expr = f"{w!r} * value" if t == "rating" else repr(w)
        whens.append(f"WHEN '{t}' THEN {expr}")
    return f"CASE type {' '.join(whens)} ELSE 0.0 END"


def weighted_cells(events, weights: dict[str, float] | None = None, binary: bool = False):
    """Positive events summed per user-item cell, as ``InteractionData.matrix`` builds it.

    Parameters
    ----------
    events : pyspark.sql.DataFrame
        Event frame (``read_events`` or ``events_from_data``).
    weights : dict of str to float, optional
        Event-type weights overriding ``DEFAULT_WEIGHTS``; ``None``: the defaults.
    binary : bool
        Every cell 1.

    Returns
    -------
    pyspark.sql.DataFrame
        Columns user_id, item_id, w (double, > 0).
    """
    from pyspark.sql import functions as F

    w = F.expr(weight_sql(weights)).cast("double")
    cells = (
        events.select("user_id", "item_id", w.alias("w"))
        .where(F.col("w") > 0)
        .groupBy("user_id", "item_id")
        .agg(F.sum("w").alias("w"))
    )
    if binary:
        cells = cells.select("user_id", "item_id", F.lit(1.0).alias("w"))
    return cells
