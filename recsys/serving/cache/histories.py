"""Incremental user state: a user's history kept in Redis beside their cached lists, so that a
miss (above all the read right after an event) needs no SQL.

One key per user, ``<prefix>:uhist:{<user>}:<cache epoch>:<HISTORY_MAX_EVENTS>``, holding::

    h1:<history token>\\t<newest event's time in microseconds>\\t<events>\\n
    <item>\\t<type>\\t<value>\\t<unix seconds>\\n      one line per event, newest first

It is valid only while its token is the user's current history token
(``recsys.serving.cache.results``), exactly as a cached list is:

* **Written from SQL** by a miss that read the history from SQL, in the round trip that stores
  the list, tagged with the token that request read *before* its SQL read (so a history can
  never carry a token newer than itself).
* **Appended by the event write**: ``POST /v1/events`` commits, then, in the round trip that
  sets the users' new tokens, runs ``APPEND`` per user. The script sets the new token and, only
  when the stored history was valid (its token was the current one) *and* every new event is
  strictly newer than its newest event, puts the new events in front and re-tags it with the
  new token; otherwise it deletes it. So an appended history is in SQL's order (time, then id,
  newest first) and never holds an event twice: a history read from SQL after the event's
  commit already holds the event, so the event is not newer than it, and it is dropped.
* **Read** on a miss in the round trip that takes the stampede lock; a history whose token is
  not the one the request read is ignored (SQL is read instead). Any other change of a user's
  token (a deletion, a Redis outage's epoch bump: the epoch is in the key) leaves it stale.

SQL stays the truth: a missing, stale or malformed history is read from SQL, and a user with
more than ``2 x HISTORY_MAX_EVENTS`` events stored is dropped and read again (trimmed). Only with
a Redis server or cluster (``ResultCache.shared``); the in-process cache reads SQL.
"""

from __future__ import annotations

from itertools import repeat

from recsys.core.types import UserHistory

TAG = "h1:"

# KEYS: the token key, the history key. ARGV: the new token, the token's TTL (s), the new
# events' lines (newest first), their oldest time (us), their newest time (us), their count,
# the most events a history may hold. Returns 1 when appended.
APPEND = """
local old = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
local h = redis.call('GET', KEYS[2])
if not h then return 0 end
local nl = string.find(h, '\\n', 1, true)
if nl then
  local tag, newest, count = string.match(string.sub(h, 1, nl - 1), '^h1:(.*)\\t(%d+)\\t(%d+)$')
  if tag == (old or '') and tonumber(ARGV[4]) > tonumber(newest)
      and tonumber(count) + tonumber(ARGV[6]) <= tonumber(ARGV[7]) then
    redis.call('SET', KEYS[2], 'h1:' .. ARGV[1] .. '\\t' .. ARGV[5] .. '\\t'
      .. (tonumber(count) + tonumber(ARGV[6])) .. '\\n' .. ARGV[3] .. string.sub(h, nl + 1),
      'KEEPTTL')
    return 1
  end
end
redis.call('DEL', KEYS[2])
return 0
"""


def lines(items, types, values, seconds) -> str | None:
    """Events as the history's lines (newest first).

    Parameters
    ----------
    items, types : list of str
        Item ids and event types, newest first.
    values : list of float
        Event values.
    seconds : list of int or float
        Event times.

    Returns
    -------
    str or None
        One tab-separated line per event; None when an item id holds a tab or a newline
        (such a history is not kept: SQL is read).
    """
    if not (len(items) == len(types) == len(values) == len(seconds)):
        raise ValueError("the event lists differ in length")
    if not items:
        return ""
    # Joined in C (map, str.join), no Python frame per event.
    rows = zip(items, types, map(repr, values), map(str, seconds), strict=True)
    text = "\n".join(map("\t".join, rows))
    if text.count("\t") != 3 * len(items) or text.count("\n") != len(items) - 1:
        return None
    return text + "\n"


def encode(token: bytes | None, history: UserHistory, newest_us: int | None) -> bytes | None:
    """The stored form of a history read from SQL under ``token`` (None: not to be kept).

    Parameters
    ----------
    token : bytes or None
        The history token read before the history (None: the user has none yet, kept under
        an empty tag, as ``ResultCache`` keeps lists).
    history : UserHistory
        The history, newest first.
    newest_us : int or None
        Its newest event's time in microseconds (None: no events).

    Returns
    -------
    bytes or None
    """
    token = token or b""
    if b"\t" in token or b"\n" in token:
        return None
    body = lines(history.items, history.types, history.values, history.ts)
    if body is None:
        return None
    head = f"{TAG}{token.decode()}\t{newest_us or 0}\t{len(history)}\n"
    return (head + body).encode()


def decode(raw: bytes | None, token: bytes | None, user_id: str, limit: int) -> UserHistory | None:
    """The history stored in ``raw`` if it is valid for ``token``, its newest ``limit`` events;
    None when missing, stale or malformed.

    Parameters
    ----------
    raw : bytes or None
        The stored value.
    token : bytes or None
        The user's history token the request read.
    user_id : str
        Whose.
    limit : int
        Events at most.

    Returns
    -------
    UserHistory or None
    """
    if raw is None:
        return None
    token = token or b""
    try:
        text = raw.decode()
        head, _, body = text.partition("\n")
        tag, _, _ = head.partition("\t")
        if tag[len(TAG) :] != token.decode() or not tag.startswith(TAG):
            return None
        rows = body.split("\n")[:-1][:limit]
        if not rows:
            return UserHistory(user_id)
        items, types, values, seconds = zip(*map(str.split, rows, repeat("\t")), strict=True)
        return UserHistory(
            user_id, list(items), list(types), list(map(float, values)), list(map(int, seconds))
        )
    except ValueError:  # malformed (a foreign value): read SQL
        return None
