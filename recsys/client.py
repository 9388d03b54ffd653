"""A small typed Python client of the HTTP API (``requests``), one method per operation a shop
or a script calls, named after the OpenAPI ``operationId`` (``getUserRecommendations`` ->
``get_user_recommendations``).

    from recsys.client import RecsysClient

    api = RecsysClient("http://127.0.0.1:8000", api_key=None)
    recs = api.get_user_recommendations("u1", n=5, fields=["title", "price"])
    for item in recs["items"]:
        print(item["item_id"], item["score"], item.get("title"))
    api.post_events({"user_id": "u1", "item_id": recs["items"][0]["item_id"], "type": "click"})

Every error answer (4xx/5xx, the service's uniform ``{code, name, description, detail}``)
raises ``ApiError`` with those fields, the request id and ``Retry-After``. Answers are plain
dicts typed with ``TypedDict`` (what the OpenAPI document declares; the service may add
keys). It imports nothing else of the service, so it can be copied into a shop's code as it is.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, NotRequired, TypedDict

import requests

EventType = Literal["view", "click", "cart", "purchase", "rating", "dislike"]


class RecItem(TypedDict):
    """One item of a list: id, score and the item data asked for with ``fields``."""

    item_id: str
    score: float
    sources: NotRequired[dict[str, float]]
    title: NotRequired[str | None]
    price: NotRequired[float | None]
    image_url: NotRequired[str | None]
    categories: NotRequired[list[str]]
    attributes: NotRequired[dict[str, Any]]


class RecList(TypedDict):
    """A recommendation list (``RecOut``)."""

    items: list[RecItem]
    route: str
    cached: bool
    degraded: bool
    model_versions: dict[str, str]
    user_id: NotRequired[str | None]
    experiment: NotRequired[dict[str, str]]
    profile: NotRequired[str | None]


class Event(TypedDict):
    """An event to record (``EventIn``); ``timestamp``: ISO 8601 or unix seconds."""

    user_id: str
    item_id: str
    type: EventType
    value: NotRequired[float]
    timestamp: NotRequired[str | float]
    id: NotRequired[str]


class Impression(TypedDict):
    """A list shown to a user (``ImpressionIn``), items in the order shown."""

    user_id: str
    items: list[str]
    context: NotRequired[str]
    request_id: NotRequired[str]
    timestamp: NotRequired[str | float]
    id: NotRequired[str]


class WriteCounts(TypedDict):
    """Answer of ``post_events`` / ``post_impressions``."""

    received: int
    inserted: int
    duplicates: int


class UserEvent(TypedDict):
    """One stored event of a user."""

    event_id: int
    item_id: str
    type: str
    value: float
    timestamp: str


class UserEvents(TypedDict):
    """A page of a user's events, newest first."""

    user_id: str
    events: list[UserEvent]
    next_cursor: str | None


class EventsDeleted(TypedDict):
    """Answer of the event deletions."""

    user_id: str
    item_id: str | None
    event_id: int | None
    events_deleted: int
    impressions_deleted: int


class ApiError(Exception):
    """An error answer of the service.

    Parameters
    ----------
    status : int
        The HTTP status.
    body : Mapping[str, Any]
        The JSON error body (``code``, ``name``, ``description``, ``detail``), or ``{}``.
    request_id : str or None
        The answer's ``X-Request-ID`` (quote it when reporting a problem).
    retry_after : float or None
        Seconds the service asks to wait (``Retry-After``: 429, 503), else None.
    """

    def __init__(
        self,
        status: int,
        body: Mapping[str, Any],
        request_id: str | None = None,
        retry_after: float | None = None,
    ):
        self.status = status
        self.name = str(body.get("name", ""))
        self.description = str(body.get("description", ""))
        self.detail = body.get("detail") or {}
        self.request_id = request_id
        self.retry_after = retry_after
        super().__init__(f"{status} {self.name}: {self.description}")


def _csv(values: Iterable[str] | str | None) -> str | None:
    if values is None or isinstance(values, str):
        return values
    return ",".join(values)


class RecsysClient:
    """The API over one ``requests.Session`` (keep-alive connections).

    Parameters
    ----------
    base_url : str
        Where the service is (``http://127.0.0.1:8000``, or with a proxy's path prefix).
    api_key : str or None
        Sent as ``X-API-Key`` when the deployment requires keys.
    admin_token : str or None
        Sent as ``Authorization: Bearer`` to ``/v1/admin/*`` only.
    timeout : float
        Seconds per request.
    session : requests.Session or None
        A session to use (its adapters, proxies ...); None: a new one.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        admin_token: str | None = None,
        timeout: float = 10.0,
        session: requests.Session | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.admin_token = admin_token
        self.timeout = timeout
        self.http = session or requests.Session()
        self.last_response: requests.Response | None = None

    def close(self) -> None:
        """Close the session's connections.

        Returns
        -------
        None
        """
        self.http.close()

    def __enter__(self) -> RecsysClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """One call: the decoded JSON answer, or ``ApiError``.

        Parameters
        ----------
        method : str
            ``GET``, ``POST`` ...
        path : str
            The path, from ``/`` (ids already URL-quoted).
        params : Mapping or None
            Query parameters; None values are left out.
        json : Any
            The JSON body; None: none.
        headers : Mapping or None
            Extra headers (``X-Priority``, ``X-Request-ID`` ...).

        Returns
        -------
        Any
            The answer's JSON (None for an empty body).

        Raises
        ------
        ApiError
            The service answered 4xx or 5xx.
        """
        sent = dict(headers or {})
        if self.api_key:
            sent.setdefault("X-API-Key", self.api_key)
        if self.admin_token and path.startswith("/v1/admin"):
            sent.setdefault("Authorization", f"Bearer {self.admin_token}")
        query = {k: v for k, v in (params or {}).items() if v is not None}
        r = self.http.request(
            method,
            self.base_url + path,
            params=query,
            json=json,
            headers=sent,
            timeout=self.timeout,
        )
        self.last_response = r
        if r.status_code >= 400:
            try:
                body = r.json()
            except ValueError:
                body = {"description": r.text[:200]}
            retry = r.headers.get("Retry-After")
            raise ApiError(
                r.status_code,
                body if isinstance(body, dict) else {},
                r.headers.get("X-Request-ID"),
                float(retry) if retry and retry.replace(".", "", 1).isdigit() else None,
            )
        return r.json() if r.content else None

    # -- recommendations ----------------------------------------------------------------------
    def get_user_recommendations(
        self,
        user_id: str,
        n: int = 10,
        offset: int = 0,
        category: str | None = None,
        exclude: Sequence[str] | None = None,
        fields: Sequence[str] | None = None,
        explain: bool = False,
        priority: Literal["low", "normal", "high"] | None = None,
    ) -> RecList:
        """``getUserRecommendations``: a user's list (unknown users are cold, not errors).

        Parameters
        ----------
        user_id : str
            The user.
        n : int
            Items wanted (1..100).
        offset : int
            Items of the ranked list skipped (0..1000).
        category : str or None
            Only items of this category.
        exclude : Sequence[str] or None
            Item ids never to return.
        fields : Sequence[str] or None
            Item data with each item (title, price, image_url, categories,
            attributes); None: the default set.
        explain : bool
            Add each item's per-strategy ``sources``.
        priority : str or None
            ``X-Priority``: low, normal or high.

        Returns
        -------
        RecList
            The list.
        """
        return self.request(
            "GET",
            f"/v1/users/{_quote(user_id)}/recommendations",
            self._list_params(n, offset, category, exclude, fields, explain),
            headers={"X-Priority": priority} if priority else None,
        )

    def get_session_recommendations(
        self,
        items: Sequence[str],
        n: int = 10,
        offset: int = 0,
        category: str | None = None,
        exclude: Sequence[str] = (),
        fields: Sequence[str] | None = None,
        explain: bool = False,
    ) -> RecList:
        """``getSessionRecommendations``: a guest's list from their recent items.

        Parameters
        ----------
        items : Sequence[str]
            The guest's recent items, newest first.
        n : int
            Items wanted (1..100).
        offset : int
            Items of the ranked list skipped (0..1000).
        category : str or None
            Only items of this category.
        exclude : Sequence[str]
            Item ids never to return.
        fields : Sequence[str] or None
            Item data with each item (title, price, image_url, categories,
            attributes); None: the default set.
        explain : bool
            Add each item's per-strategy ``sources``.

        Returns
        -------
        RecList
            The list.
        """
        body: dict[str, Any] = {
            "items": list(items),
            "n": n,
            "offset": offset,
            "exclude": list(exclude),
            "explain": explain,
        }
        if category is not None:
            body["category"] = category
        if fields is not None:
            body["fields"] = list(fields)
        return self.request("POST", "/v1/recommendations", json=body)

    def get_similar_items(
        self,
        item_id: str,
        n: int = 10,
        offset: int = 0,
        category: str | None = None,
        exclude: Sequence[str] | None = None,
        fields: Sequence[str] | None = None,
        explain: bool = False,
    ) -> RecList:
        """``getSimilarItems``: items like ``item_id``.

        Parameters
        ----------
        item_id : str
            The item.
        n : int
            Items wanted (1..100).
        offset : int
            Items of the ranked list skipped (0..1000).
        category : str or None
            Only items of this category.
        exclude : Sequence[str] or None
            Item ids never to return.
        fields : Sequence[str] or None
            Item data with each item (title, price, image_url, categories,
            attributes); None: the default set.
        explain : bool
            Add each item's per-strategy ``sources``.

        Returns
        -------
        RecList
            The list.
        """
        return self.request(
            "GET",
            f"/v1/items/{_quote(item_id)}/similar",
            self._list_params(n, offset, category, exclude, fields, explain),
        )

    def get_popular_items(
        self,
        n: int = 10,
        offset: int = 0,
        category: str | None = None,
        user_id: str | None = None,
        fields: Sequence[str] | None = None,
    ) -> RecList:
        """``getPopularItems``: the most popular items.

        Parameters
        ----------
        n : int
            Items wanted (1..100).
        offset : int
            Items of the ranked list skipped (0..1000).
        category : str or None
            Only items of this category.
        user_id : str or None
            Leave out every item this user has an event with.
        fields : Sequence[str] or None
            Item data with each item (title, price, image_url, categories,
            attributes); None: the default set.

        Returns
        -------
        RecList
            The list.
        """
        params = self._list_params(n, offset, category, None, fields, False)
        return self.request("GET", "/v1/popular", {**params, "user_id": user_id})

    def get_latest_items(
        self,
        n: int = 10,
        offset: int = 0,
        category: str | None = None,
        fields: Sequence[str] | None = None,
    ) -> RecList:
        """``getLatestItems``: the newest available items.

        Parameters
        ----------
        n : int
            Items wanted (1..100).
        offset : int
            Items of the ranked list skipped (0..1000).
        category : str or None
            Only items of this category.
        fields : Sequence[str] or None
            Item data with each item (title, price, image_url, categories,
            attributes); None: the default set.

        Returns
        -------
        RecList
            The list (``score``: unix seconds).
        """
        return self.request(
            "GET", "/v1/latest", self._list_params(n, offset, category, None, fields, False)
        )

    @staticmethod
    def _list_params(
        n: int,
        offset: int,
        category: str | None,
        exclude: Sequence[str] | None,
        fields: Sequence[str] | None,
        explain: bool,
    ) -> dict[str, Any]:
        return {
            "n": n,
            "offset": offset or None,
            "category": category,
            "exclude": _csv(exclude) or None,
            "fields": _csv(fields),
            "explain": "true" if explain else None,
        }

    # -- events and impressions ---------------------------------------------------------------
    def post_events(self, events: Event | Sequence[Event]) -> WriteCounts:
        """``postEvents``: one event or a list (stored whole or not at all).

        Parameters
        ----------
        events : Event or Sequence[Event]
            What users did.

        Returns
        -------
        WriteCounts
            Received, inserted, duplicates.
        """
        body = dict(events) if isinstance(events, Mapping) else [dict(e) for e in events]
        return self.request("POST", "/v1/events", json=body)

    def post_impressions(self, shown: Impression | Sequence[Impression]) -> WriteCounts:
        """``postImpressions``: what was shown (one list, or several).

        Parameters
        ----------
        shown : Impression or Sequence[Impression]
            The lists shown.

        Returns
        -------
        WriteCounts
            Received, inserted, duplicates (in lists).
        """
        body = dict(shown) if isinstance(shown, Mapping) else [dict(s) for s in shown]
        return self.request("POST", "/v1/impressions", json=body)

    def list_user_events(
        self,
        user_id: str,
        limit: int = 50,
        cursor: str | None = None,
        type: EventType | None = None,  # noqa: A002 - the API's name
    ) -> UserEvents:
        """``listUserEvents``: one page of a user's events, newest first.

        Parameters
        ----------
        user_id : str
            The user.
        limit : int
            Events per page (1..500).
        cursor : str or None
            The previous page's ``next_cursor``; None: the first page.
        type : str or None
            Only this event type.

        Returns
        -------
        UserEvents
            The page and the next cursor.
        """
        params = {"limit": limit, "cursor": cursor, "type": type}
        return self.request("GET", f"/v1/users/{_quote(user_id)}/events", params)

    def iter_user_events(
        self,
        user_id: str,
        page_size: int = 100,
        type: EventType | None = None,  # noqa: A002
    ) -> Iterator[UserEvent]:
        """Every event of a user, newest first, following the cursor.

        Parameters
        ----------
        user_id : str
            The user.
        page_size : int
            Events per request.
        type : str or None
            Only this event type.

        Yields
        ------
        UserEvent
            One event at a time.
        """
        cursor = None
        while True:
            page = self.list_user_events(user_id, page_size, cursor, type)
            yield from page["events"]
            cursor = page["next_cursor"]
            if cursor is None:
                return

    def delete_user_event(self, user_id: str, event_id: int) -> EventsDeleted:
        """``deleteUserEvent``: one event of the user.

        Parameters
        ----------
        user_id : str
            The user.
        event_id : int
            The event, as listed.

        Returns
        -------
        EventsDeleted
            What went.
        """
        return self.request("DELETE", f"/v1/users/{_quote(user_id)}/events/{int(event_id)}")

    def delete_user_item_events(self, user_id: str, item_id: str) -> EventsDeleted:
        """``deleteUserItemEvents``: forget an item for a user (events and impressions).

        Parameters
        ----------
        user_id : str
            The user.
        item_id : str
            The item to forget.

        Returns
        -------
        EventsDeleted
            What went.
        """
        return self.request("DELETE", f"/v1/users/{_quote(user_id)}/events", {"item_id": item_id})

    def get_user_neighbors(self, user_id: str, n: int = 10) -> dict[str, Any]:
        """``getUserNeighbors``: the users whose items overlap this user's most.

        Parameters
        ----------
        user_id : str
            The user.
        n : int
            How many (1..100).

        Returns
        -------
        dict
            ``{"user_id", "neighbors": [{"user_id", "score", "shared_items"}]}``.
        """
        return self.request("GET", f"/v1/users/{_quote(user_id)}/neighbors", {"n": n})

    # -- catalogue ----------------------------------------------------------------------------
    def put_item(self, item_id: str, **fields: Any) -> dict[str, Any]:
        """``putItem``: create or update an item.

        Parameters
        ----------
        item_id : str
            The item.
        **fields : Any
            title, description, categories, price, image_url, available, attributes.

        Returns
        -------
        dict
            The item, with ``created``.
        """
        return self.request("PUT", f"/v1/items/{_quote(item_id)}", json=fields)

    def get_item(self, item_id: str) -> dict[str, Any]:
        """``getItem``: one item.

        Parameters
        ----------
        item_id : str
            The item.

        Returns
        -------
        dict
            The item.
        """
        return self.request("GET", f"/v1/items/{_quote(item_id)}")

    def delete_user(self, user_id: str) -> dict[str, Any]:
        """``deleteUser``: erase a user and their events.

        Parameters
        ----------
        user_id : str
            The user.

        Returns
        -------
        dict
            The user and the number of events erased.
        """
        return self.request("DELETE", f"/v1/users/{_quote(user_id)}")

    # -- experiments (admin token) ------------------------------------------------------------
    def create_experiment(self, experiment: Mapping[str, Any]) -> dict[str, Any]:
        """``createExperiment`` (admin token).

        Parameters
        ----------
        experiment : Mapping[str, Any]
            ``{name, variants: [{name, weight, config}], ...}``.

        Returns
        -------
        dict
            The experiment.
        """
        return self.request("POST", "/v1/admin/experiments", json=dict(experiment))

    def stop_experiment(self, name: str) -> dict[str, Any]:
        """``stopExperiment`` (admin token).

        Parameters
        ----------
        name : str
            The experiment.

        Returns
        -------
        dict
            The experiment, stopped.
        """
        return self.request("POST", f"/v1/admin/experiments/{_quote(name)}/stop")

    def get_experiment_report(self, name: str, window_hours: float | None = None) -> dict[str, Any]:
        """``getExperimentReport``: per-variant exposures and rates (admin token).

        Parameters
        ----------
        name : str
            The experiment.
        window_hours : float or None
            Hours of events; None: the default window.

        Returns
        -------
        dict
            The report.
        """
        return self.request(
            "GET",
            f"/v1/admin/experiments/{_quote(name)}/report",
            {"window_hours": window_hours},
        )


def _quote(part: str) -> str:
    from urllib.parse import quote

    return quote(str(part), safe="")
