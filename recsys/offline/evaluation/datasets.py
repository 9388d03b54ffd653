"""Fast readers for the benchmark datasets, straight into ``InteractionData`` (no SQL store).

* MovieLens 100K (``u.data`` + ``u.item``): never copied into the repo (its license forbids
  redistribution); pass the folder, by default ``../shared/datasets/ml-100k``.
* Online Retail (UCI, bundled as ``recsys/data/online_retail.csv.gz``): product purchases only.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import logging
import os
import re
from collections import Counter, defaultdict

import numpy as np

from features.interactions import InteractionData, ItemMeta
from recsys.paths import DATA_DIR, PROJECT_ROOT

log = logging.getLogger(__name__)

ML100K_DIR = os.path.join(PROJECT_ROOT, "..", "shared", "datasets", "ml-100k")
RETAIL_FILE = os.path.join(DATA_DIR, "online_retail.csv.gz")

ML100K_GENRES = (
    "unknown Action Adventure Animation Children's Comedy Crime Documentary Drama Fantasy "
    "Film-Noir Horror Musical Mystery Romance Sci-Fi Thriller War Western"
).split()

# Retail product codes are five digits plus an optional letter suffix; everything else
# (POST, D, M, BANK CHARGES, DOT, AMAZONFEE, gift_..., C2, PADS, ...) is a fee or adjustment,
# not something to recommend.
_PRODUCT_CODE = re.compile(r"^\d{5}[A-Za-z]{0,2}$")


def load_movielens_100k(path: str | None = None) -> InteractionData:
    """``u.data`` in file order (the order Recommenders' loader keeps, which its seeded
    split depends on) as ``rating`` events, with titles and genres from ``u.item``.

    Parameters
    ----------
    path : str or None
        The folder holding ``u.data`` and ``u.item``; None means ``ML100K_DIR``.

    Returns
    -------
    InteractionData
        The ratings (value 1 to 5, Unix-second timestamps) over the whole catalogue of
        ``u.item`` (item index in ascending movie id), ``info["dataset"] == "ml-100k"``.

    Raises
    ------
    FileNotFoundError
        ``u.data`` is not in ``path``.
    """
    path = path or ML100K_DIR
    data_file = os.path.join(path, "u.data")
    if not os.path.exists(data_file):
        raise FileNotFoundError(f"MovieLens 100K not found: {data_file}")
    raw = np.loadtxt(data_file, dtype=np.int64)
    users, items, ratings, ts = raw[:, 0], raw[:, 1], raw[:, 2], raw[:, 3]
    meta_ids, titles, cats = [], [], []
    item_file = os.path.join(path, "u.item")
    with open(item_file, encoding="latin-1") as f:
        for line in f:
            parts = line.rstrip("\n").split("|")
            if len(parts) < 24:
                continue
            meta_ids.append(parts[0])
            titles.append(parts[1])
            flags = parts[5:24]
            cats.append([g for g, on in zip(ML100K_GENRES, flags, strict=True) if on == "1"])
    # Item index order: ascending movie id, the whole catalogue (u.item), so unseen movies
    # exist in the model too.
    order = np.argsort(np.asarray(meta_ids, dtype=np.int64))
    all_ids = [meta_ids[i] for i in order]
    meta = ItemMeta(
        titles=[titles[i] for i in order],
        descriptions=[""] * len(order),
        categories=[cats[i] for i in order],
        available=np.ones(len(order), dtype=bool),
    )
    data = InteractionData.from_arrays(
        users.astype(str),
        items.astype(str),
        event_types="rating",
        values=ratings.astype(np.float32),
        timestamps=ts,
        all_item_ids=all_ids,
        item_meta=meta,
    )
    data.info["dataset"] = "ml-100k"
    return data


def _parse_ts(s: str) -> int:
    return int(dt.datetime.fromisoformat(s).replace(tzinfo=dt.UTC).timestamp())


def load_online_retail(path: str | None = None) -> InteractionData:
    """Purchases from the UCI Online Retail log: rows with a customer, quantity > 0, not a
    cancellation (invoice "C..."), and a product stock code. One ``purchase`` event per invoice
    line, ``value`` = quantity; item text = the most frequent description of the stock code;
    no categories (the dataset has none).

    Parameters
    ----------
    path : str or None
        The gzipped CSV; None means the bundled ``RETAIL_FILE``.

    Returns
    -------
    InteractionData
        The purchases (Unix-second timestamps, UTC) with titles and unit prices,
        ``info["dataset"] == "online-retail"``.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    """
    path = path or RETAIL_FILE
    if not os.path.exists(path):
        raise FileNotFoundError(f"Online Retail file not found: {path}")
    users, items, qty, ts_str = [], [], [], []
    descr: dict[str, Counter] = defaultdict(Counter)
    price: dict[str, float] = {}
    with gzip.open(path, "rb") as raw:
        reader = csv.reader(io.TextIOWrapper(raw, encoding="utf-8", errors="replace"))
        header = next(reader)
        col = {name: i for i, name in enumerate(header)}
        ci, si, di, qi, ti, pi, ui = (
            col["InvoiceNo"],
            col["StockCode"],
            col["Description"],
            col["Quantity"],
            col["InvoiceDate"],
            col["UnitPrice"],
            col["CustomerID"],
        )
        for row in reader:
            cust = row[ui]
            if not cust or row[ci].startswith("C"):
                continue
            code = row[si].strip().upper()
            if not _PRODUCT_CODE.match(code):
                continue
            q = int(float(row[qi]))
            if q <= 0:
                continue
            users.append(cust.split(".")[0])
            items.append(code)
            qty.append(q)
            ts_str.append(row[ti])
            if row[di]:
                descr[code][row[di].strip()] += 1
            price[code] = float(row[pi])
    # Timestamps: parse each distinct string once (many lines share an invoice time).
    cache: dict[str, int] = {}
    ts = np.fromiter(
        (cache[s] if s in cache else cache.setdefault(s, _parse_ts(s)) for s in ts_str),
        dtype=np.int64,
        count=len(ts_str),
    )
    item_ids = sorted(set(items))
    meta = ItemMeta(
        titles=[descr[c].most_common(1)[0][0] if descr[c] else c for c in item_ids],
        descriptions=[""] * len(item_ids),
        categories=[[] for _ in item_ids],
        available=np.ones(len(item_ids), dtype=bool),
        price=np.asarray([price.get(c, np.nan) for c in item_ids], dtype=np.float64),
    )
    data = InteractionData.from_arrays(
        users,
        items,
        event_types="purchase",
        values=np.asarray(qty, dtype=np.float32),
        timestamps=ts,
        all_item_ids=item_ids,
        item_meta=meta,
    )
    data.info["dataset"] = "online-retail"
    log.info("online retail: %d events, %d users, %d items", len(data), data.n_users, data.n_items)
    return data
