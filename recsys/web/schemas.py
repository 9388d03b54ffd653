"""Marshmallow schemas (through APIFlask) for input validation and the OpenAPI document.

Just over 500 lines because of its docstrings: every request and answer shape of the public
API sits in this one module, next to the field types and bounds they share.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from apiflask import Schema
from apiflask.fields import Boolean, Dict, Float, Integer, List, Nested, Raw, String
from apiflask.validators import Length, OneOf, Range
from marshmallow import ValidationError, validates_schema

from recsys.core.config import BLEND_METHODS, MAX_WEIGHT, NORMALIZATIONS, ROUTING
from recsys.serving.catalog import DEFAULT_ITEM_FIELDS, ITEM_FIELDS, parse_fields
from recsys.store.models import EVENT_TYPES

MAX_N = 100
MAX_OFFSET = 1000
MAX_ID = 128
MAX_EXCLUDE = 500
MAX_SESSION_ITEMS = 200


def check_text(value: str) -> str | None:
    """Why ``value`` cannot be stored as text, or None. PostgreSQL text refuses NUL, and a lone
    surrogate (valid in JSON's ``\\ud800``, not in UTF-8) cannot be encoded at all.

    Parameters
    ----------
    value : str
        The text to store.

    Returns
    -------
    str or None
        What is wrong with it; None when it can be stored.
    """
    if "\x00" in value:
        return "must not contain NUL (\\u0000) characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode (no lone surrogates)"
    return None


def id_problem(value: str, what: str = "user_id") -> str | None:
    """Why ``value`` is not an acceptable id in a URL, or None (the views and the WSGI fast
    path check path ids with this).

    Parameters
    ----------
    value : str
        The id, as decoded from the URL.
    what : str
        Its name in the message (``user_id``, ``item_id``...).

    Returns
    -------
    str or None
        What is wrong with it (blank, longer than ``MAX_ID``, or not storable text); None
        when it is acceptable.
    """
    if not value.strip() or len(value) > MAX_ID:
        return f"{what} must be 1..{MAX_ID} characters"
    if why := check_text(value):  # %00 in the URL would reach SQL
        return f"{what} {why}"
    return None


def split_exclude(raw: str | None) -> list[str] | None:
    """The item ids of an ``exclude`` query value (comma-separated, blanks dropped), or None
    when there are more than ``MAX_EXCLUDE`` or one is longer than ``MAX_ID``.

    Parameters
    ----------
    raw : str or None
        The ``exclude`` query value; None or "" excludes nothing.

    Returns
    -------
    list[str] or None
        The ids, in the order given; None when the value is out of bounds.
    """
    if not raw:
        return []
    out = [x.strip() for x in raw.split(",") if x.strip()]
    if len(out) > MAX_EXCLUDE or any(len(x) > MAX_ID for x in out):
        return None
    return out


class Text(String):
    """A string that can be stored in SQL (see check_text)."""

    def _deserialize(self, value, attr, data, **kwargs):
        out = super()._deserialize(value, attr, data, **kwargs)
        why = check_text(out)
        if why:
            raise ValidationError(why)
        return out


def _json_safe(value, depth: int = 0) -> None:
    """Free-form attributes are stored as JSON: finite numbers, storable strings, bounded depth."""
    if depth > 20:
        raise ValidationError("nested too deeply")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValidationError("numbers must be finite")
    if isinstance(value, int) and not isinstance(value, bool):
        try:  # beyond float range: no JSON reader outside Python could take it back
            float(value)
        except OverflowError:
            raise ValidationError("numbers must be within the range of a 64-bit float") from None
    if isinstance(value, str) and check_text(value):
        raise ValidationError(check_text(value))
    if isinstance(value, dict):
        for k, v in value.items():
            _json_safe(k, depth + 1)
            _json_safe(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _json_safe(v, depth + 1)


class ExternalId(Text):
    """An external id: a non-empty string (integers are accepted and turned into strings)."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        out = super()._deserialize(value, attr, data, **kwargs)
        out = out.strip()
        if not out:
            raise ValidationError("must not be empty")
        if len(out) > MAX_ID:
            raise ValidationError(f"longer than {MAX_ID} characters")
        return out


def StrictBool(**kw) -> Boolean:  # noqa: N802 - a field factory reads like a field
    """JSON true/false only (marshmallow's default also takes "no", 0, "off"...).

    Parameters
    ----------
    **kw
        Keyword arguments of ``marshmallow.fields.Boolean`` (``load_default``...).

    Returns
    -------
    Boolean
        A field that takes only JSON ``true`` and ``false``.
    """
    return Boolean(truthy={True}, falsy={False}, **kw)


def _finite(v: float) -> None:
    if not math.isfinite(v):
        raise ValidationError("must be a finite number")


class Timestamp(Raw):
    """ISO-8601 (``2026-01-31T12:00:00Z``) or unix seconds; stored as naive UTC."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool):
            raise ValidationError("must be ISO-8601 or unix seconds")
        if isinstance(value, int | float):
            try:  # an integer beyond float range overflows in isfinite() and float()
                if not math.isfinite(value):
                    raise ValidationError("must be a finite number of unix seconds")
                ts = datetime.fromtimestamp(float(value), UTC)
            except (OverflowError, OSError, ValueError) as e:
                raise ValidationError("unix seconds out of range") from e
        elif isinstance(value, str):
            try:
                ts = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
            except ValueError as e:
                raise ValidationError("not an ISO-8601 date-time") from e
            if ts.tzinfo is None:
                ts = ts.replace(tzinfo=UTC)
        else:
            raise ValidationError("must be ISO-8601 or unix seconds")
        ts = ts.astimezone(UTC)
        if ts.year < 1990 or ts > datetime.now(UTC) + timedelta(days=1):
            raise ValidationError("timestamp out of range (1990 .. now + 1 day)")
        return ts.replace(tzinfo=None)


# -- recommendations ------------------------------------------------------------------------
class ItemFields(String):
    """``fields=title,price``: the item data each list item carries (a tuple in
    ``ITEM_FIELDS`` order; absent: None, i.e. the default set; empty: none)."""

    def _deserialize(self, value, attr, data, **kwargs):
        out = super()._deserialize(value, attr, data, **kwargs)
        try:
            return parse_fields(out)
        except ValueError as e:
            raise ValidationError(str(e)) from e


def item_fields(value: tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    """A deserialised ``fields`` value (a query's tuple or a body's list) in ``ITEM_FIELDS``
    order; the default set when it was not given.

    Parameters
    ----------
    value : tuple[str, ...] or list[str] or None
        The deserialised ``fields`` value: a tuple (query, already ordered), a list (body),
        or None when not given.

    Returns
    -------
    tuple[str, ...]
        Field names in ``ITEM_FIELDS`` order; ``DEFAULT_ITEM_FIELDS`` for None.
    """
    if value is None:
        return DEFAULT_ITEM_FIELDS
    if isinstance(value, tuple):
        return value
    return tuple(f for f in ITEM_FIELDS if f in value)


def _fields_param() -> ItemFields:
    return ItemFields(
        load_default=None,
        validate=Length(max=200),
        metadata={
            "description": "comma-separated item data to include with each item, among "
            f"{', '.join(ITEM_FIELDS)}; default {','.join(DEFAULT_ITEM_FIELDS)}; "
            "empty for ids and scores only"
        },
    )


class RecQuery(Schema):
    """Query of ``GET /v1/users/<id>/recommendations``: page (``n``, ``offset``), ``category``,
    ``exclude`` (comma-separated ids), ``explain`` and the item ``fields``.
    """

    n = Integer(load_default=10, validate=Range(1, MAX_N))
    offset = Integer(load_default=0, validate=Range(0, MAX_OFFSET))
    category = Text(load_default=None, validate=Length(1, MAX_ID))
    exclude = Text(
        load_default=None,
        metadata={"description": "comma-separated item ids never to return"},
        validate=Length(max=20_000),
    )
    explain = Boolean(
        load_default=False,
        metadata={"description": "add each item's per-strategy `sources`"},
    )
    fields = _fields_param()


class SessionIn(Schema):
    """Body of ``POST /v1/recommendations``: the guest's recent ``items`` (newest first), page,
    ``category``, ``exclude`` (a list of ids), ``explain`` and the item ``fields``.
    """

    items = List(
        ExternalId(),
        required=True,
        validate=Length(max=MAX_SESSION_ITEMS),
        metadata={"description": "the guest's recent items, newest first"},
    )
    n = Integer(load_default=10, validate=Range(1, MAX_N))
    offset = Integer(load_default=0, validate=Range(0, MAX_OFFSET))
    category = Text(load_default=None, validate=Length(1, MAX_ID))
    exclude = List(ExternalId(), load_default=list, validate=Length(max=MAX_EXCLUDE))
    explain = StrictBool(load_default=False)
    fields = List(
        String(validate=OneOf(ITEM_FIELDS)),
        load_default=None,
        metadata={
            "description": "item data to include with each item (default: "
            f"{', '.join(DEFAULT_ITEM_FIELDS)})"
        },
    )


class RecItemOut(Schema):
    """One item of a recommendation list: id, score, per-strategy ``sources`` and item data."""

    # Always in the answer (``required``: the generated clients type them as present).
    item_id = String(required=True)
    score = Float(required=True)
    sources = Dict(
        keys=String(),
        values=Float(),
        metadata={"description": "per strategy contribution (with explain=true)"},
    )
    # Item data, as chosen by ``fields=`` (null for an item the catalogue lacks).
    title = String(allow_none=True)
    price = Float(allow_none=True)
    image_url = String(allow_none=True)
    categories = List(String())
    attributes = Dict()


class RecOut(Schema):
    """A recommendation list: the items, the route, cache / degraded flags and model versions."""

    user_id = String(required=True, allow_none=True)
    route = String(
        required=True,
        metadata={
            "description": "cold | warm, or the learned route's name when a serving profile is "
            "active (popular/similar for those lists)"
        },
    )
    items = List(Nested(RecItemOut), required=True)
    cached = Boolean(required=True)
    degraded = Boolean(
        required=True, metadata={"description": "a strategy was dropped (error or deadline)"}
    )
    model_versions = Dict(keys=String(), values=String(), required=True)
    experiment = Dict(metadata={"description": "experiment and variant, when one applies"})
    profile = String(
        allow_none=True,
        metadata={"description": "with explain=true: the serving profile version in force"},
    )


class CountQuery(Schema):
    """Query of ``GET /v1/popular``: page, ``category``, ``explain`` and the item ``fields``."""

    n = Integer(load_default=10, validate=Range(1, MAX_N))
    offset = Integer(load_default=0, validate=Range(0, MAX_OFFSET))
    category = Text(load_default=None, validate=Length(1, MAX_ID))
    explain = Boolean(load_default=False)
    fields = _fields_param()


class PopularQuery(CountQuery):
    """Query of ``GET /v1/popular``: ``CountQuery`` and ``user_id``, whose items are left out."""

    user_id = ExternalId(
        load_default=None,
        metadata={"description": "leave out every item this user has an event with"},
    )


class SimilarQuery(CountQuery):
    """Query of ``GET /v1/items/<id>/similar``: ``CountQuery`` and ``exclude``."""

    exclude = Text(
        load_default=None,
        metadata={"description": "comma-separated item ids never to return"},
        validate=Length(max=20_000),
    )


class LatestQuery(CountQuery):
    """Query of ``GET /v1/latest``: page, ``category``, ``explain`` (no effect) and ``fields``."""


# -- events ---------------------------------------------------------------------------------
class EventIn(Schema):
    """One event of ``POST /v1/events``: user, item, type, value, timestamp and idempotency key."""

    user_id = ExternalId(required=True)
    item_id = ExternalId(required=True)
    type = String(required=True, validate=OneOf(EVENT_TYPES))
    # Bounded so that weights derived from it stay finite in float32 model maths.
    value = Float(load_default=1.0, validate=[_finite, Range(-1e9, 1e9)])
    timestamp = Timestamp(load_default=None)
    id = Text(
        load_default=None,
        validate=Length(1, 190),
        metadata={"description": "idempotency key: re-sending the same id inserts nothing"},
    )


class UserEventsQuery(Schema):
    """Query of ``GET /v1/users/<id>/events``: page size, ``cursor`` and an event ``type``."""

    limit = Integer(load_default=50, validate=Range(1, 500))
    cursor = Text(
        load_default=None,
        validate=Length(1, 400),
        metadata={"description": "`next_cursor` of the previous page"},
    )
    type = String(load_default=None, validate=OneOf(EVENT_TYPES))


class UserEventOut(Schema):
    """One event of a user: its id (for ``DELETE``), item, type, value and time (UTC)."""

    event_id = Integer()
    item_id = String()
    type = String()
    value = Float()
    timestamp = String(metadata={"description": "ISO 8601, UTC"})


class UserEventsOut(Schema):
    """Answer of ``GET /v1/users/<id>/events``: a page, newest first, and the next cursor."""

    user_id = String()
    events = List(Nested(UserEventOut))
    next_cursor = String(
        allow_none=True, metadata={"description": "pass as `cursor` for the next page; null: end"}
    )


class ForgetItemQuery(Schema):
    """Query of ``DELETE /v1/users/<id>/events``: the item whose events go."""

    item_id = ExternalId(required=True)


class EventsDeletedOut(Schema):
    """Answer of the event deletions: what went (and that the user's cached lists went too)."""

    user_id = String()
    item_id = String(allow_none=True)
    event_id = Integer(allow_none=True)
    events_deleted = Integer()
    impressions_deleted = Integer()


class NeighborsQuery(Schema):
    """Query of ``GET /v1/users/<id>/neighbors``: how many."""

    n = Integer(load_default=10, validate=Range(1, MAX_N))


class NeighborOut(Schema):
    """One similar user: id, cosine similarity of the two item sets, items in common."""

    user_id = String()
    score = Float()
    shared_items = Integer()


class NeighborsOut(Schema):
    """Answer of ``GET /v1/users/<id>/neighbors``: the most similar users first."""

    user_id = String()
    neighbors = List(Nested(NeighborOut))


class ImpressionIn(Schema):
    """One list a storefront showed a user: the ``items`` in the order shown, where
    (``context``), the answer's ``request_id``, when, and an idempotency ``id``."""

    user_id = ExternalId(required=True)
    items = List(
        ExternalId(),
        required=True,
        validate=Length(1, MAX_SESSION_ITEMS),
        metadata={"description": "item ids in the order shown (position 0 first)"},
    )
    context = Text(
        load_default="",
        validate=Length(max=64),
        metadata={"description": "where the list was shown: home, cart, item page ..."},
    )
    request_id = Text(
        load_default=None,
        validate=Length(1, 128),
        metadata={"description": "X-Request-ID of the answer that produced the list"},
    )
    timestamp = Timestamp(load_default=None)
    id = Text(
        load_default=None,
        validate=Length(1, 180),
        metadata={"description": "idempotency key: re-sending the same id inserts nothing"},
    )


class EventsOut(Schema):
    """Answer of ``POST /v1/events``: events received, inserted, and skipped as duplicates."""

    received = Integer(required=True)
    inserted = Integer(required=True)
    duplicates = Integer(required=True)


# -- catalogue ------------------------------------------------------------------------------
class ItemIn(Schema):
    """Body of ``PUT /v1/items/<id>``: the fields to set (absent fields keep their value)."""

    title = Text(validate=Length(max=512))
    description = Text(validate=Length(max=20_000))
    categories = List(Text(validate=Length(1, MAX_ID)), validate=Length(max=50))
    price = Float(allow_none=True, validate=_finite)
    image_url = Text(allow_none=True, validate=Length(max=2048))
    available = StrictBool()
    attributes = Dict(keys=String(), validate=_json_safe)


class ItemOut(Schema):
    """An item as the catalogue endpoints answer it, with ``created`` (true on a 201)."""

    item_id = String(required=True)
    title = String()
    description = String()
    categories = List(String())
    price = Float(allow_none=True)
    image_url = String(allow_none=True)
    available = Boolean()
    attributes = Dict()
    created = Boolean()


class ItemListQuery(Schema):
    """Query of ``GET /v1/items``: page size, ``cursor``, ``category`` and ``available``."""

    limit = Integer(load_default=50, validate=Range(1, 500))
    cursor = Text(
        load_default=None,
        validate=Length(1, 400),
        metadata={"description": "`next_cursor` of the previous page"},
    )
    category = Text(load_default=None, validate=Length(1, MAX_ID))
    available = Boolean(load_default=None, allow_none=True)


class ItemListEntry(Schema):
    """One item of ``GET /v1/items``."""

    item_id = String(required=True)
    title = String()
    price = Float(allow_none=True)
    image_url = String(allow_none=True)
    categories = List(String())
    attributes = Dict()
    available = Boolean()


class ItemListOut(Schema):
    """Answer of ``GET /v1/items``: one page and the cursor of the next (null: the last page)."""

    items = List(Nested(ItemListEntry), required=True)
    next_cursor = String(
        required=True,
        allow_none=True,
        metadata={"description": "pass as `cursor` for the next page; null: end"},
    )


class UserListQuery(Schema):
    """Query of ``GET /v1/users``: page size and ``cursor``."""

    limit = Integer(load_default=50, validate=Range(1, 500))
    cursor = Text(load_default=None, validate=Length(1, 400))


class UserEntry(Schema):
    """One user: id, attributes, number of events, creation and update times."""

    user_id = String(required=True)
    attributes = Dict()
    events = Integer(metadata={"description": "events recorded for the user"})
    created_at = String()
    updated_at = String()


class UserDetailOut(UserEntry):
    """``GET /v1/users/<id>`` (its own name: apispec keeps one component per schema use)."""


class UserListOut(Schema):
    """Answer of ``GET /v1/users``: one page and the cursor of the next (null: the last page)."""

    users = List(Nested(UserEntry), required=True)
    next_cursor = String(required=True, allow_none=True)


class UserDeletedOut(Schema):
    """Answer of ``DELETE /v1/users/<id>``: the user erased and how many events went with it."""

    user_id = String()
    deleted = Boolean()
    events_deleted = Integer()


class UserIn(Schema):
    """Body of ``PUT /v1/users/<id>``: the user's ``attributes`` (replaced as a whole)."""

    attributes = Dict(keys=String(), load_default=dict, validate=_json_safe)


class UserOut(Schema):
    """Answer of ``PUT /v1/users/<id>``: id, attributes and whether it was created."""

    user_id = String(required=True)
    attributes = Dict()
    created = Boolean()


# -- admin ----------------------------------------------------------------------------------
class StrategyPatch(Schema):
    """One strategy's change in ``PATCH /v1/admin/strategies``: ``enabled`` and / or ``weight``."""

    enabled = StrictBool()
    # Bounded (recsys.core.config): a huge weight would overflow the blended scores to infinity.
    weight = Float(validate=[Range(0, MAX_WEIGHT), _finite])


class AuditQuery(Schema):
    """Query of ``GET /v1/admin/audit``: page (``limit``, ``offset``) and filters."""

    limit = Integer(load_default=50, validate=Range(1, 500))
    offset = Integer(load_default=0, validate=Range(0, 1_000_000_000))  # SQL bigint bound
    action = Text(load_default=None, validate=Length(1, 64))
    actor = Text(load_default=None, validate=Length(1, 128))
    target = Text(load_default=None, validate=Length(1, 256))


def _range(key: str) -> Range:
    return Range(ROUTING[key].low, ROUTING[key].high)


def _items(key: str) -> Length:
    return Length(max=ROUTING[key].max_items)


class RoutingPatch(Schema):
    """Partial routing settings (see ServingConfig); unknown keys are refused. The bounds are
    ``recsys.core.config.ROUTING``'s; ServingConfig then checks the rest (known, distinct
    strategy names; the learned routes in full) with a message naming the key and the rule."""

    cold_threshold = Integer(validate=_range("cold_threshold"))
    cold_strategies = List(String(), validate=_items("cold_strategies"))
    warm_strategies = List(String(), validate=_items("warm_strategies"))
    blend = String(validate=OneOf(BLEND_METHODS))
    normalize = String(validate=OneOf(NORMALIZATIONS))
    rrf_k = Float(validate=[_range("rrf_k"), _finite])
    max_per_category = Integer(allow_none=True, validate=_range("max_per_category"))
    exclude_seen = StrictBool()
    seen_types = List(String(validate=OneOf(EVENT_TYPES)), validate=_items("seen_types"))
    candidates_per_strategy = Integer(validate=_range("candidates_per_strategy"))
    # Learned routes (normally set by a serving profile, recsys.offline.tuning); null: cold/warm.
    # Checked in full by ServingConfig (names, bounds, weights).
    routes = List(Dict(), allow_none=True, validate=Length(1, ROUTING["routes"].max_items))

    @validates_schema
    def _not_empty(self, data, **kwargs):
        if not data:
            raise ValidationError("give at least one routing setting")


class ResetQuery(Schema):
    """Query of ``DELETE /v1/admin/strategies/<name>``: the ``field``\\ s to reset (repeat it;
    absent: all)."""

    field = List(
        String(validate=OneOf(["enabled", "weight"])),
        metadata={"description": "enabled or weight; repeat for both; absent: every field"},
    )


class ReportQuery(Schema):
    """Query of ``GET /v1/admin/experiments/<name>/report``: the window in hours."""

    window_hours = Float(
        validate=Range(0, 87_600, min_inclusive=False),
        metadata={"description": "hours of events to report on (default: the experiments' window)"},
    )
