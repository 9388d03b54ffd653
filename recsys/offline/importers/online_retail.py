"""UCI Online Retail: one CSV line per invoice line -> ``purchase`` events.

Every data line is either imported as one purchase event or skipped with exactly one reason,
checked in this order (the first that applies wins):

1. ``malformed row``          wrong number of fields
2. ``missing stock code``
3. ``bad quantity``           Quantity is not an integer
4. ``bad date``               InvoiceDate is neither ISO nor the original ``M/D/YYYY H:MM``
5. ``cancellation``           InvoiceNo starts with ``C``
6. ``non-positive quantity``  Quantity <= 0 (stock adjustments: damaged, lost, ...)
7. ``missing customer``       no CustomerID (guest checkout)
8. ``bad customer id``        CustomerID is not a whole number

What is left is the standard cleaning (customer present, quantity > 0, not a cancellation).
Each imported line becomes ``purchase`` with value = Quantity, ts = InvoiceDate, user = the
CustomerID as an integer string (``17850.0`` -> ``"17850"``), idempotency key
``online-retail:<line number>`` (line 1 is the header), so re-importing the file adds nothing.

The catalogue is built from the imported lines only: a StockCode seen only on skipped lines
(guest-only, cancelled-only or adjustment-only codes, mostly without a description) does not
become an item, so items = stock codes with purchase events. Item title = the most frequent
Description of the code, price = its most frequent positive UnitPrice (ties: the most recent),
category = a heuristic head noun of the title (see :func:`head_noun_category`). Postage, fees
and similar non-product codes become items with ``available=False`` and
``attributes={"non_product": true}``: their purchase lines still count as events, but they are
never recommended. Users get ``attributes={"country": <country of their latest line>}``.
"""

from __future__ import annotations

import csv
import os
import re
import time
from collections import Counter, defaultdict
from datetime import datetime

from recsys.offline.importers.common import (
    ImportBatch,
    ImportReport,
    ItemRow,
    SourceError,
    check_id,
    open_text,
    progress,
)
from recsys.paths import DATA_DIR

SOURCE = "online-retail"
COLUMNS = (
    "InvoiceNo",
    "StockCode",
    "Description",
    "Quantity",
    "InvoiceDate",
    "UnitPrice",
    "CustomerID",
    "Country",
)

# Codes that are charges, fees, samples or vouchers rather than products (upper-cased).
NON_PRODUCT_CODES = frozenset(
    {
        "POST",  # postage
        "DOT",  # dotcom postage
        "M",  # manual
        "C2",  # carriage
        "D",  # discount
        "S",  # samples
        "B",  # adjust bad debt
        "BANK CHARGES",
        "AMAZONFEE",
        "CRUK",  # CRUK commission
        "PADS",  # "pads to match all cushions", a zero-price placeholder
    }
)
NON_PRODUCT_CATEGORY = "non-product"


def is_non_product(code: str) -> bool:
    """Whether a stock code is a fee, postage or adjustment rather than a product.

    Parameters
    ----------
    code : str
        The stock code (any case).

    Returns
    -------
    bool
        True for ``NON_PRODUCT_CODES`` and ``GIFT_...`` codes.
    """
    c = code.upper()
    return c in NON_PRODUCT_CODES or c.startswith("GIFT_")


def default_path() -> str:
    """The bundled ``online_retail.csv.gz``: package data (``recsys/data``, in the wheel too).

    Returns
    -------
    str
        Absolute path of the bundled file (which may be missing).
    """
    return os.path.join(DATA_DIR, "online_retail.csv.gz")


# Words that qualify the product rather than name it: colours, sizes, patterns, themes and
# glue words. They are dropped from the end of a title before taking its last word.
_MODIFIERS = frozenset(
    """
    RED PINK BLUE GREEN WHITE BLACK IVORY CREAM PURPLE ORANGE YELLOW GOLD SILVER BROWN GREY GRAY
    LILAC TURQUOISE AQUA NATURAL CLEAR COPPER PASTEL BRIGHT DARK LIGHT MULTI COLOUR COLOURS COLOR
    SMALL LARGE MEDIUM MINI JUMBO BIG GIANT TALL ASSORTED DESIGN DESIGNS SET SETS OF AND IN WITH
    THE FOR TO ON POLKADOT SPOT SPOTS SPOTTY STRIPE STRIPES STRIPED FLORAL VINTAGE RETRO RETROSPOT
    ANTIQUE PAISLEY GLITTER WOODEN ZINC METAL ENAMEL CRYSTAL LACE WICKER PAINTED HANGING HEART
    HEARTS ROSE ROSES LOVE CHRISTMAS XMAS SPACEBOY LONDON GIRL BOY GARDEN BABUSHKA DOLLY
    """.split()
)
_WORD = re.compile(r"\b[A-Z][A-Z']+\b")


def head_noun_category(title: str) -> str:
    """A coarse category: the last content word of an upper-case product title, singular.

    A heuristic (the dataset has no taxonomy): ``WHITE HANGING HEART T-LIGHT HOLDER`` ->
    ``holder``, ``LUNCH BAG RED RETROSPOT`` -> ``bag``, ``SET OF 3 CAKE TINS`` -> ``tin``.
    Titles with no usable word give ``other``.

    Parameters
    ----------
    title : str
        The product title.

    Returns
    -------
    str
        The category, lower case; ``other`` when no word is left.
    """
    words = _WORD.findall(title.upper())
    while words and words[-1] in _MODIFIERS:
        words.pop()
    if not words:
        return "other"
    w = words[-1]
    if w.endswith(("XES", "SHES", "CHES", "SSES")):
        w = w[:-2]
    elif len(w) > 3 and w.endswith("S") and not w.endswith("SS"):
        w = w[:-1]
    return w.lower()


def _parse_date(s: str, cache: dict[str, datetime]) -> datetime:
    dt = cache.get(s)
    if dt is None:
        try:
            dt = datetime.fromisoformat(s)
        except ValueError:
            # The original UCI spreadsheet export writes 12/1/2010 8:26.
            dt = datetime.strptime(s, "%m/%d/%Y %H:%M")
        if dt.tzinfo is not None:
            raise ValueError("unexpected timezone")
        cache[s] = dt
    return dt


def _customer_id(s: str) -> str:
    """``17850.0`` / ``17850`` -> ``"17850"``; anything else raises ValueError."""
    if s.endswith(".0"):
        s = s[:-2]
    if s.isdigit():
        return str(int(s))
    v = float(s)
    if not v.is_integer() or v < 0:
        raise ValueError(s)
    return str(int(v))


def parse(path: str) -> tuple[ImportReport, ImportBatch]:
    """Read the file into a batch, accounting for every line.

    Parameters
    ----------
    path : str
        The CSV file (plain or gzip).

    Returns
    -------
    tuple[ImportReport, ImportBatch]
        The report (``written`` still empty) and the batch to write.

    Raises
    ------
    SourceError
        The file is missing, unreadable, or lacks a required column.
    """
    t0 = time.perf_counter()
    report = ImportReport(source=f"{SOURCE} {path}")
    lines = report.file("lines")
    batch = ImportBatch()
    descriptions: dict[str, Counter] = defaultdict(Counter)
    prices: dict[str, dict[float, list[int]]] = defaultdict(dict)  # price -> [count, last line]
    countries: dict[str, str] = {}
    dates: dict[str, datetime] = {}
    events = batch.events
    with open_text(path) as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise SourceError(f"{path} is empty")
        col = {name.strip().lstrip("\ufeff"): i for i, name in enumerate(header)}
        missing = [c for c in COLUMNS if c not in col]
        if missing:
            raise SourceError(
                f"{path} does not look like Online Retail: missing column(s) {', '.join(missing)}"
            )
        i_inv, i_code, i_desc, i_qty, i_date, i_price, i_cust, i_country = (col[c] for c in COLUMNS)
        width = len(header)
        for row in progress(reader, desc="read online-retail", unit=" lines"):
            n = reader.line_num
            lines.read += 1
            if len(row) != width:
                lines.skip(n, "malformed row", f"{len(row)} fields, expected {width}")
                continue
            code = row[i_code].strip()
            if not code:
                lines.skip(n, "missing stock code")
                continue
            if len(code) > 128:
                lines.skip(n, "stock code too long")
                continue
            try:
                qty = int(row[i_qty])
            except ValueError:
                lines.skip(n, "bad quantity", repr(row[i_qty]))
                continue
            try:
                ts = _parse_date(row[i_date].strip(), dates)
            except ValueError:
                lines.skip(n, "bad date", repr(row[i_date]))
                continue
            invoice = row[i_inv].strip()
            if invoice[:1] in ("C", "c"):
                lines.skip(n, "cancellation", f"invoice {invoice}")
                continue
            if qty <= 0:
                lines.skip(n, "non-positive quantity", f"quantity {qty}")
                continue
            raw_customer = row[i_cust].strip()
            if not raw_customer:
                lines.skip(n, "missing customer", f"invoice {invoice}")
                continue
            try:
                user = check_id(_customer_id(raw_customer))
            except ValueError:
                user = None
            if user is None:
                lines.skip(n, "bad customer id", repr(raw_customer))
                continue
            events.append((user, code, "purchase", float(qty), ts, f"{SOURCE}:{n}"))
            desc = row[i_desc].strip()
            if desc:
                descriptions[code][desc] += 1
            try:
                price = float(row[i_price])
            except ValueError:
                price = 0.0
            if price > 0:
                code_prices = prices[code]
                seen = code_prices.get(price)
                if seen is None:
                    code_prices[price] = [1, n]
                else:
                    seen[0] += 1
                    seen[1] = n
            countries[user] = row[i_country].strip()

    for user, country in countries.items():
        batch.users[user] = {"country": country} if country else {}
    for _, code, *_rest in events:
        if code in batch.items:
            continue
        descs = descriptions.get(code)
        title = descs.most_common(1)[0][0] if descs else code
        by_price = prices.get(code)
        price = max(by_price.items(), key=lambda kv: tuple(kv[1]))[0] if by_price else None
        if is_non_product(code):
            batch.items[code] = ItemRow(
                title=title,
                categories=[NON_PRODUCT_CATEGORY],
                price=price,
                available=False,
                attributes={"non_product": True},
            )
        else:
            batch.items[code] = ItemRow(
                title=title, categories=[head_noun_category(title)], price=price
            )
    non_products = sum(1 for it in batch.items.values() if it is not None and not it.available)
    report.notes.append(
        f"{len(batch.items):,} stock codes with purchases become items "
        f"({non_products} non-product codes stored unavailable); "
        f"{len(batch.users):,} customers become users"
    )
    report.seconds = time.perf_counter() - t0
    return report, batch
