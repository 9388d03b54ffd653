"""A synthetic shop: a catalogue and a year of shopper events with a real shop's structure,
written as the CSV files ``recsys import csv`` reads (``items.csv``, ``interactions.csv``).

numpy only, seeded (the same arguments give the same bytes), streamed: the catalogue and one
integer per shopper are held in memory, events are generated and written one chunk of shoppers
at a time, so L (10M events) and XL (100M) never hold every event. The structure (see
``docs/synth.md``):

* **Categories**: ``top`` categories, each with ``subs`` sub-categories; an item belongs to one
  sub-category (``categories`` = ``Top|Top/Sub``). Sub-category sizes are skewed.
* **Popularity**: an item's base weight is ``(rank + 5) ** -zipf`` over a random permutation of
  the items (Zipf-Mandelbrot: a power law with a flattened head).
* **Launches**: a share of the catalogue exists at the start of the year; the rest is launched
  uniformly through it; an item gets no event before its launch.
* **Shoppers**: events per shopper are 1 + a multinomial share drawn from a log-normal weight
  (heavy-tailed); each shopper has one to three favourite top categories, and most of their
  events fall in them.
* **Sessions**: a shopper's events come in sessions (geometric length) at random moments of the
  year, a few seconds to minutes apart within a session.
* **Event types**: view > click > cart > purchase; a cart or purchase often follows the same
  item earlier in the session; a purchase's value is a quantity.
* **Repeat purchases**: some top categories are consumables; a purchase often re-buys the
  shopper's earlier consumable purchase.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

# (items, shoppers, events)
SIZES: dict[str, tuple[int, int, int]] = {
    "S": (5_000, 20_000, 200_000),
    "M": (50_000, 200_000, 2_000_000),
    "L": (100_000, 1_000_000, 10_000_000),
    "XL": (1_000_000, 10_000_000, 100_000_000),
}
EVENT_TYPES = ("view", "click", "cart", "purchase")
TOP_NAMES = (
    "Grocery", "Beauty", "Pet", "Household", "Baby", "Fashion", "Shoes", "Electronics",
    "Computers", "Phones", "Home", "Garden", "Kitchen", "Toys", "Sports", "Books", "Music",
    "Office", "Auto", "Tools",
)  # fmt: skip
CONSUMABLE_TOPS = frozenset({"Grocery", "Beauty", "Pet", "Household", "Baby"})
YEAR_S = 365 * 24 * 3600


@dataclass(frozen=True)
class SynthParams:
    """The generator's knobs (the defaults are the documented shop).

    Parameters
    ----------
    items, users, events : int
        Catalogue size, shoppers and events (every shopper has at least one event).
    seed : int
        The random seed.
    zipf, zipf_offset : float
        Popularity: an item of popularity rank r (1, 2, ...) has weight
        ``(r + zipf_offset) ** -zipf`` (Zipf-Mandelbrot: a power law with a flattened head).
    top, subs : int
        Top categories (at most 20) and sub-categories per top category.
    prelaunched : float
        Share of items that exist at the start of the year; the rest launch through it.
    activity_sigma : float
        Log-normal sigma of a shopper's activity weight (larger: heavier tail).
    in_favourite : float
        Share of a shopper's events in their favourite categories.
    session_mean : float
        Mean events per session.
    type_probs : tuple of float
        Probabilities of view, click, cart, purchase.
    same_item : float
        Chance a cart or purchase is the same item as the session's previous event when that
        is an earlier step of the funnel (a view or click before a cart, a cart before a
        purchase).
    repeat : float
        Chance a purchase re-buys the shopper's earlier purchase when that is a consumable.
    start : str
        ISO date the year starts (UTC).
    """

    items: int
    users: int
    events: int
    seed: int = 0
    zipf: float = 1.0
    zipf_offset: float = 5.0
    top: int = 20
    subs: int = 10
    prelaunched: float = 0.5
    activity_sigma: float = 1.5
    in_favourite: float = 0.7
    session_mean: float = 5.0
    type_probs: tuple[float, float, float, float] = (0.70, 0.17, 0.08, 0.05)
    same_item: float = 0.6
    repeat: float = 0.5
    start: str = "2025-01-01"

    def check(self) -> None:
        """Raise ValueError on impossible values.

        Raises
        ------
        ValueError
            A count is not positive, there are fewer events than shoppers, or a knob is out of
            range.
        """
        if min(self.items, self.users, self.events) < 1:
            raise ValueError("items, users and events must be positive")
        if self.events < self.users:
            raise ValueError(
                f"events ({self.events}) < users ({self.users}): every shopper has an event"
            )
        if not 1 <= self.top <= len(TOP_NAMES) or self.subs < 1:
            raise ValueError(f"top must be 1..{len(TOP_NAMES)} and subs >= 1")
        if abs(sum(self.type_probs) - 1) > 1e-9:
            raise ValueError("type_probs must sum to 1")


@dataclass
class Catalogue:
    """The generated items (index i is item ``i{i}``).

    Parameters
    ----------
    sub : numpy.ndarray
        Sub-category index of each item (``top * subs`` of them).
    weight : numpy.ndarray
        Popularity weight.
    launch : numpy.ndarray
        Launch time, unix seconds.
    consumable : numpy.ndarray
        Whether the item is a consumable.
    price : numpy.ndarray
        Price.
    """

    sub: np.ndarray
    weight: np.ndarray
    launch: np.ndarray
    consumable: np.ndarray
    price: np.ndarray


def sizes(size: str | None, items: int | None, users: int | None, events: int | None) -> tuple:
    """The counts for a named size, each overridden by an explicit value.

    Parameters
    ----------
    size : str or None
        S, M, L or XL (case ignored); None: S.
    items, users, events : int or None
        Explicit counts (None: the size's).

    Returns
    -------
    tuple of int
        (items, users, events).
    """
    base = SIZES[(size or "S").upper()]
    return tuple(
        v if v is not None else b for v, b in zip((items, users, events), base, strict=True)
    )


def start_time(p: SynthParams) -> int:
    """The year's start in unix seconds.

    Parameters
    ----------
    p : SynthParams
        The parameters.

    Returns
    -------
    int
        Unix seconds of ``p.start`` at midnight UTC.
    """
    return int(datetime.fromisoformat(p.start).replace(tzinfo=UTC).timestamp())


def make_catalogue(p: SynthParams, rng: np.random.Generator) -> Catalogue:
    """Draw the catalogue.

    Parameters
    ----------
    p : SynthParams
        The parameters.
    rng : numpy.random.Generator
        The random source.

    Returns
    -------
    Catalogue
        The items.
    """
    n_sub = p.top * p.subs
    sub_w = rng.pareto(1.5, n_sub) + 0.2  # skewed sub-category sizes
    sub = rng.choice(n_sub, size=p.items, p=sub_w / sub_w.sum())
    rank = rng.permutation(p.items) + 1
    weight = (rank + p.zipf_offset) ** -p.zipf
    t0 = start_time(p)
    launch = t0 + rng.integers(0, YEAR_S, p.items)
    launch[rng.random(p.items) < p.prelaunched] = t0
    launch[np.argmax(weight)] = t0  # the most popular item always exists: a fallback
    tops = np.array([TOP_NAMES[t] in CONSUMABLE_TOPS for t in range(p.top)])
    consumable = tops[sub // p.subs]
    price = np.round(np.exp(rng.normal(2.5, 1.0, p.items)), 2)
    return Catalogue(sub=sub, weight=weight, launch=launch, consumable=consumable, price=price)


class _Sampler:
    """Items by popularity, globally or within a top category, by inverse-CDF lookup."""

    def __init__(self, cat: Catalogue, p: SynthParams):
        top = cat.sub // p.subs
        self.order = np.argsort(top, kind="stable")  # items grouped by top category
        self.cum = np.cumsum(cat.weight[self.order])
        bounds = np.searchsorted(top[self.order], np.arange(p.top + 1))
        lo = np.concatenate([[0.0], self.cum])[bounds]
        self.lo, self.hi = lo[:-1], lo[1:]  # each top category's slice of the CDF
        self.empty = self.hi <= self.lo
        early = np.flatnonzero(cat.launch == cat.launch.min())
        self.early, self.early_cum = early, np.cumsum(cat.weight[early])

    def draw(self, rng: np.random.Generator, top: np.ndarray | None, n: int) -> np.ndarray:
        if top is None:
            u = rng.random(n) * self.cum[-1]
        else:
            u = self.lo[top] + rng.random(n) * (self.hi[top] - self.lo[top])
        idx = np.minimum(np.searchsorted(self.cum, u, side="right"), len(self.cum) - 1)
        return self.order[idx]

    def draw_early(self, rng: np.random.Generator, n: int) -> np.ndarray:
        u = rng.random(n) * self.early_cum[-1]
        idx = np.minimum(np.searchsorted(self.early_cum, u, side="right"), len(self.early) - 1)
        return self.early[idx]


def events_per_user(p: SynthParams, rng: np.random.Generator) -> np.ndarray:
    """Events of each shopper: one each, the rest shared by log-normal activity weights.

    Parameters
    ----------
    p : SynthParams
        The parameters.
    rng : numpy.random.Generator
        The random source.

    Returns
    -------
    numpy.ndarray
        int64 counts summing to ``p.events``.
    """
    w = rng.lognormal(0.0, p.activity_sigma, p.users)
    return 1 + rng.multinomial(p.events - p.users, w / w.sum()).astype(np.int64)


def _group_start(user: np.ndarray) -> np.ndarray:
    first = np.ones(len(user), dtype=bool)
    first[1:] = user[1:] != user[:-1]
    return first


def _chunk_events(
    p: SynthParams,
    cat: Catalogue,
    sampler: _Sampler,
    counts: np.ndarray,
    first_user: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, ...]:
    """One chunk of shoppers' events, sorted by shopper then time: (user, item, type, value,
    ts). A shopper's timestamps strictly increase, so no two rows are identical."""
    n_u = len(counts)
    user = np.repeat(np.arange(n_u), counts)
    n = len(user)
    first = _group_start(user)
    pos = np.arange(n)
    # sessions: a new one at the shopper's first event and then with chance 1 / session_mean
    new_session = first | (rng.random(n) < 1.0 / p.session_mean)
    session = np.cumsum(new_session) - 1
    n_s = int(session[-1]) + 1
    s_user = user[new_session]
    s_start = rng.integers(0, YEAR_S, n_s)
    # order the sessions of each shopper in time (sessions are already grouped by shopper)
    order = np.lexsort((s_start, s_user))
    s_start = s_start[order]
    gap = np.maximum(1, rng.exponential(45.0, n).astype(np.int64))
    gap[new_session] = 0
    csum = np.cumsum(gap)
    ts = start_time(p) + s_start[session] + csum - csum[np.flatnonzero(new_session)][session]
    # strictly increasing per shopper: t'_k = max(t_k, t'_(k-1) + 1), via a grouped running max
    big = np.int64(4 * YEAR_S + 4 * n + 10)
    u = ts - pos + user.astype(np.int64) * big
    ts = np.maximum.accumulate(u) - user.astype(np.int64) * big + pos
    # types
    etype = rng.choice(4, size=n, p=np.asarray(p.type_probs)).astype(np.int8)
    # items: favourite categories (1-3 per shopper) or the whole catalogue, launched by then
    n_fav = rng.integers(1, 4, n_u)
    fav_w = sampler.hi - sampler.lo
    favs = rng.choice(p.top, size=(n_u, 3), p=fav_w / fav_w.sum())
    pick = favs[user, (rng.random(n) * n_fav[user]).astype(np.int64)]
    in_fav = (rng.random(n) < p.in_favourite) & ~sampler.empty[pick]
    item = np.empty(n, dtype=np.int64)
    idx = np.flatnonzero(in_fav)
    item[idx] = sampler.draw(rng, pick[idx], len(idx))
    idx = np.flatnonzero(~in_fav)
    item[idx] = sampler.draw(rng, None, len(idx))
    for _ in range(20):  # redraw events before their item's launch
        bad = np.flatnonzero(cat.launch[item] > ts)
        if not len(bad):
            break
        fav = in_fav[bad]
        item[bad[fav]] = sampler.draw(rng, pick[bad[fav]], int(fav.sum()))
        item[bad[~fav]] = sampler.draw(rng, None, int((~fav).sum()))
    bad = np.flatnonzero(cat.launch[item] > ts)
    item[bad] = sampler.draw_early(rng, len(bad))
    # carts and purchases often follow the session's previous item
    step_up = np.zeros(n, dtype=bool)
    step_up[1:] = etype[1:] > etype[:-1]  # view -> cart, cart -> purchase, ...
    same = (etype >= 2) & step_up & ~new_session & (rng.random(n) < p.same_item)
    src = np.where(same, 0, pos)
    src = np.maximum.accumulate(src)  # the last event of the chain that is not "same"
    item = item[src]
    # repeat purchases: re-buy the shopper's previous purchase when it is a consumable
    pidx = np.flatnonzero(etype == 3)
    if len(pidx):
        pu = user[pidx]
        repeat = ~_group_start(pu) & (rng.random(len(pidx)) < p.repeat)
        base = np.maximum.accumulate(np.where(repeat, 0, np.arange(len(pidx))))
        src_item = item[pidx[base]]
        item[pidx] = np.where(repeat & cat.consumable[src_item], src_item, item[pidx])
    value = np.ones(n, dtype=np.int64)
    value[pidx] = rng.geometric(0.6, len(pidx))  # quantity >= 1
    return user + first_user, item, etype, value, ts


def write_items(path: str, p: SynthParams, cat: Catalogue) -> None:
    """Write ``items.csv``: item_id, title, categories, price, available, launched, consumable.

    Parameters
    ----------
    path : str
        The file to write.
    p : SynthParams
        The parameters.
    cat : Catalogue
        The items.
    """
    top = cat.sub // p.subs
    launched = [
        datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") for t in cat.launch.tolist()
    ]
    avail = np.random.default_rng([p.seed, 7]).random(p.items) >= 0.03
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("item_id,title,categories,price,available,launched,consumable\n")
        for i, (t, s, price, a, la, c) in enumerate(
            zip(
                top.tolist(),
                (cat.sub % p.subs).tolist(),
                cat.price.tolist(),
                avail.tolist(),
                launched,
                cat.consumable.tolist(),
                strict=True,
            )
        ):
            name = TOP_NAMES[t]
            f.write(
                f"i{i},{name} {s} item {i},{name}|{name}/{name} {s},{price},"
                f"{'true' if a else 'false'},{la},{'yes' if c else 'no'}\n"
            )


def generate(
    out_dir: str,
    p: SynthParams,
    *,
    chunk_events: int = 1_000_000,
    progress: Callable[[int], None] | None = None,
) -> dict[str, int]:
    """Write ``items.csv`` and ``interactions.csv`` into ``out_dir``.

    Parameters
    ----------
    out_dir : str
        The folder (created if missing).
    p : SynthParams
        The parameters.
    chunk_events : int
        About how many events are generated and written at a time (memory bound; part of the
        output's identity: another value draws other events).
    progress : callable or None
        Called with the number of events written after each chunk.

    Returns
    -------
    dict of str to int
        ``items``, ``users``, ``events`` written, and ``events_<type>`` per event type.
    """
    p.check()
    os.makedirs(out_dir, exist_ok=True)
    seeds = np.random.SeedSequence(p.seed)
    cat_seed, user_seed = seeds.spawn(2)
    cat = make_catalogue(p, np.random.default_rng(cat_seed))
    write_items(os.path.join(out_dir, "items.csv"), p, cat)
    counts = events_per_user(p, np.random.default_rng(user_seed))
    sampler = _Sampler(cat, p)
    # chunk boundaries: consecutive shoppers with about chunk_events events
    cum = np.cumsum(counts)
    cuts = np.searchsorted(cum, np.arange(chunk_events, p.events, chunk_events), side="left") + 1
    bounds = np.unique(np.concatenate([[0], cuts, [p.users]]))
    by_type = np.zeros(4, dtype=np.int64)
    names = np.array(EVENT_TYPES)
    with open(os.path.join(out_dir, "interactions.csv"), "w", encoding="utf-8", newline="") as f:
        f.write("user_id,item_id,event,value,timestamp\n")
        for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            rng = np.random.default_rng([p.seed, 11, k])
            user, item, etype, value, ts = _chunk_events(p, cat, sampler, counts[a:b], int(a), rng)
            by_type += np.bincount(etype, minlength=4)
            f.writelines(
                f"u{u},i{i},{e},{v},{t}\n"
                for u, i, e, v, t in zip(
                    user.tolist(),
                    item.tolist(),
                    names[etype].tolist(),
                    value.tolist(),
                    ts.tolist(),
                    strict=True,
                )
            )
            if progress is not None:
                progress(len(user))
    out = {"items": p.items, "users": p.users, "events": p.events}
    out.update({f"events_{t}": int(c) for t, c in zip(EVENT_TYPES, by_type, strict=True)})
    return out
