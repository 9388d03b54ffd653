"""The report of an online experiment: per variant exposures, click-through and conversion with
Wilson 95% intervals, and each variant against the first (difference, Newcombe 95% interval,
two-proportion z-test). Analysis, not serving: the request path (``recsys.serving.experiments``)
never imports it; the admin API and ``recsys experiments report`` do.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from recsys.serving.experiments import CLICK_TYPES, CONVERSION_TYPES, DEFAULT_WINDOW_S, get
from recsys.serving.proportions import newcombe_difference, two_proportion_p, wilson_interval
from recsys.store.models import Event, Exposure, Item, User


def report(s: Session, name: str, window_s: float = DEFAULT_WINDOW_S) -> dict[str, Any]:
    """Per-variant exposures, click-through and conversion for experiment ``name``.

    Parameters
    ----------
    s : Session
        The session read from.
    name : str
        The experiment's name.
    window_s : float, optional
        Attribution window, in seconds: an event counts for the user's latest exposure at or
        before it, within this long.

    Returns
    -------
    dict
        ``experiment``, ``window_s``, ``variants`` (per-variant counts, rates and Wilson 95%
        intervals), ``comparisons`` (each variant against the first: difference, Newcombe
        interval, p-value, verdict), ``events`` (stored, attributed, unattributed counts by
        type) and ``definitions``.

    Raises
    ------
    NotFound
        No experiment of that name.
    """
    exp = get(s, name)
    if exp is None:
        from recsys.errors import NotFound

        raise NotFound(f"no experiment named {name!r}")
    rows = s.execute(
        select(
            Exposure.id, Exposure.variant, Exposure.user_external_id, Exposure.items, Exposure.ts
        )
        .where(Exposure.experiment == name)
        .order_by(Exposure.ts, Exposure.id)
    ).all()
    by_user: dict[str, list] = defaultdict(list)
    for r in rows:
        by_user[r.user_external_id].append((r.ts, r.id, r.variant, set(r.items or [])))
    first_ts = min((r.ts for r in rows), default=None)
    events = []
    if rows:
        exposed_users = select(Exposure.user_external_id).where(Exposure.experiment == name)
        events = s.execute(
            select(User.external_id, Item.external_id, Event.type, Event.ts, Event.id)
            .join(User, User.id == Event.user_id)
            .join(Item, Item.id == Event.item_id)
            .where(User.external_id.in_(exposed_users))
            .where(Event.type.in_(CLICK_TYPES + CONVERSION_TYPES))
            .where(Event.ts >= first_ts)
            .order_by(Event.ts, Event.id)
        ).all()
    window = dt.timedelta(seconds=window_s)
    clicked: set[int] = set()
    converted: set[int] = set()
    attributed = defaultdict(lambda: defaultdict(int))  # variant -> type -> count
    unattributed = defaultdict(int)
    stored = defaultdict(int)
    for user, item, etype, ets, _eid in events:
        stored[etype] += 1
        match = None
        for ts, eid, variant, items in reversed(by_user.get(user, [])):
            if ts > ets:
                continue
            if ets - ts > window:
                break
            if item in items:
                match = (eid, variant)
                break
        if match is None:
            unattributed[etype] += 1
            continue
        eid, variant = match
        attributed[variant][etype] += 1
        (clicked if etype in CLICK_TYPES else converted).add(eid)

    variants: dict[str, dict[str, Any]] = {}
    for v in exp.variants:
        vrows = [r for r in rows if r.variant == v["name"]]
        n = len(vrows)
        n_clicked = sum(1 for r in vrows if r.id in clicked)
        n_conv = sum(1 for r in vrows if r.id in converted)
        variants[v["name"]] = {
            "weight": v["weight"],
            "exposures": n,
            "users": len({r.user_external_id for r in vrows}),
            "items_shown": sum(len(r.items or []) for r in vrows),
            "exposures_clicked": n_clicked,
            "exposures_converted": n_conv,
            "click_through": n_clicked / n if n else float("nan"),
            "click_through_ci": list(wilson_interval(n_clicked, n)),
            "conversion": n_conv / n if n else float("nan"),
            "conversion_ci": list(wilson_interval(n_conv, n)),
            "attributed_events": dict(attributed[v["name"]]),
        }
    comparisons = []
    names = [v["name"] for v in exp.variants]
    for b in names[1:]:
        a = names[0]
        va, vb = variants[a], variants[b]
        for metric, key in (
            ("click_through", "exposures_clicked"),
            ("conversion", "exposures_converted"),
        ):
            d, lo, hi = newcombe_difference(va[key], va["exposures"], vb[key], vb["exposures"])
            p = two_proportion_p(va[key], va["exposures"], vb[key], vb["exposures"])
            sig = not math.isnan(p) and p < 0.05 and (lo > 0 or hi < 0)
            numbers = f"({d:+.4f}, 95% CI [{lo:.4f}, {hi:.4f}], p={p:.3g})"
            verdict = (
                f"{b} is {'better' if d > 0 else 'worse'} than {a} on {metric} {numbers}"
                if sig
                else f"no significant difference between {b} and {a} on {metric} {numbers}"
            )
            comparisons.append(
                {
                    "metric": metric,
                    "a": a,
                    "b": b,
                    "diff": d,
                    "ci_low": lo,
                    "ci_high": hi,
                    "p_value": p,
                    "significant": sig,
                    "verdict": verdict,
                }
            )
    return {
        "experiment": exp.to_dict(),
        "window_s": window_s,
        "variants": variants,
        "comparisons": comparisons,
        "events": {
            "stored": dict(stored),
            "attributed": {t: sum(v.get(t, 0) for v in attributed.values()) for t in stored},
            "unattributed": dict(unattributed),
        },
        "definitions": {
            "exposure": "one list served to an enrolled user (cache hits included)",
            "click_through": "exposures with >= 1 attributed click / exposures",
            "conversion": "exposures with >= 1 attributed cart or purchase / exposures",
            "attribution": "latest exposure of the user in this experiment at or before the "
            "event that showed the item, within window_s",
        },
    }


def report_markdown(rep: dict[str, Any]) -> str:
    """The report as Markdown: a table of variants, the verdicts and the event counts.

    Parameters
    ----------
    rep : dict
        What ``report`` returned.

    Returns
    -------
    str
        The Markdown text.
    """
    e = rep["experiment"]
    lines = [
        f"# Experiment {e['name']} ({e['status']})",
        "",
        f"- started {e['start_at'] or e['created_at']}, stop {e['stop_at'] or '—'}; "
        f"attribution window {rep['window_s'] / 3600:g} h",
        "",
        "| variant | exposures | users | click-through [95% CI] | conversion [95% CI] |",
        "|---|---|---|---|---|",
    ]
    for name, v in rep["variants"].items():
        ct, cl = v["click_through"], v["click_through_ci"]
        cv, cc = v["conversion"], v["conversion_ci"]
        lines.append(
            f"| {name} | {v['exposures']} | {v['users']} | "
            f"{ct:.4f} [{cl[0]:.4f}, {cl[1]:.4f}] | {cv:.4f} [{cc[0]:.4f}, {cc[1]:.4f}] |"
        )
    lines += ["", "## Verdicts", ""] + [f"- {c['verdict']}" for c in rep["comparisons"]]
    ev = rep["events"]
    lines += [
        "",
        "## Events of exposed users since the first exposure",
        "",
        f"- stored: {ev['stored']}",
        f"- attributed: {ev['attributed']}",
        f"- unattributed: {ev['unattributed']}",
        "",
    ]
    return "\n".join(lines)
