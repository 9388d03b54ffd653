"""The report folder written by ``recsys evaluate``: report.json, summary.md and PNG plots.

``report.json`` holds every number (the runner's dict, as is); ``summary.md`` is the readable
version; the plots are ``metrics.png`` (headline metrics by configuration with 95% intervals)
and ``history_<metric>.png`` (the main metric by history-length bucket).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from recsys.offline.evaluation.stats import format_p

HEADLINE = ("ndcg", "precision", "recall", "map", "hit_rate", "mrr")


def _num(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _ci(interval: list[float] | None) -> str:
    if not interval:
        return ""
    return f" [{_num(interval[0])}, {_num(interval[1])}]"


def write_report(report: dict[str, Any], out_dir: str) -> dict[str, str]:
    """Write report.json, summary.md and plots into ``out_dir``; returns the paths.

    Parameters
    ----------
    report : dict[str, Any]
        The evaluation report (``runner.evaluate``'s answer).
    out_dir : str
        Folder to write into (created if missing; existing files are overwritten).

    Returns
    -------
    dict[str, str]
        ``json``, ``summary`` and the plot keys (``metrics_png``, ``history_png``) -> path.
    """
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, "report.json")}
    with open(paths["json"], "w") as f:
        json.dump(report, f, indent=2, sort_keys=False, default=_json_default)
    paths.update(write_plots(report, out_dir))
    paths["summary"] = os.path.join(out_dir, "summary.md")
    with open(paths["summary"], "w") as f:
        f.write(summary_markdown(report, plots=[os.path.basename(p) for p in paths.values()]))
    return paths


def _json_default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    return str(o)


def summary_markdown(report: dict[str, Any], plots: list[str] | None = None) -> str:
    """The report as a Markdown summary: data and split, metrics with intervals, comparisons and
    verdicts, segments, timings and plots.

    Parameters
    ----------
    report : dict[str, Any]
        The evaluation report.
    plots : list[str] or None
        File names (relative to the summary) to embed; only ``.png`` ones are shown. None: no
        plots section.

    Returns
    -------
    str
        The Markdown text.
    """
    k = report["k"]
    names = list(report["configs"])
    lines = [f"# Offline evaluation: {', '.join(names)}", ""]
    ds = report.get("dataset", {})
    sp = report.get("split", {})
    lines += [
        f"- data: {ds.get('name', '?')} ({ds.get('n_events', '?')} events, "
        f"{ds.get('n_users', '?')} users, {ds.get('n_items', '?')} items)",
        f"- split: {sp.get('name', '?')} (seed {sp.get('seed', '?')}; "
        f"train {sp.get('n_train', '?')} / test {sp.get('n_test', '?')} events; "
        f"{sp.get('n_test_users', '?')} test users)",
        f"- k = {k}; intervals are 95% bootstrap intervals over users "
        f"({report.get('resamples', '?')} resamples, seed {report.get('seed', '?')}); "
        "p-values from a paired sign-flip permutation test",
        "",
        "## Metrics",
        "",
    ]
    metric_keys = [f"{m}@{k}" for m in HEADLINE] + [f"coverage@{k}", f"novelty@{k}"]
    lines.append("| config | " + " | ".join(metric_keys) + " |")
    lines.append("|---|" + "---|" * len(metric_keys))
    for name in names:
        c = report["configs"][name]
        cells = []
        for mk in metric_keys:
            v = c["metrics"].get(mk)
            iv = c.get("intervals", {}).get(mk) if mk.startswith("ndcg") else None
            cells.append(_num(v) + _ci(iv))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    comps = report.get("comparisons", [])
    if comps:
        lines += ["## Comparisons (B - A, paired over the same users)", ""]
        lines.append("| B vs A | metric | diff | 95% CI | p | verdict |")
        lines.append("|---|---|---|---|---|---|")
        for c in comps:
            word = ("better" if c["diff"] > 0 else "worse") if c["significant"] else "no sig. diff."
            lines.append(
                f"| {c['b']} vs {c['a']} | {c['metric']} | {c['diff']:+.4f} | "
                f"[{_num(c['ci_low'])}, {_num(c['ci_high'])}] | {format_p(c['p_value'])} | "
                f"{word} |"
            )
        lines += ["", "### Verdicts", ""]
        main = report.get("main_metric", f"ndcg@{k}")
        for c in comps:
            if c["metric"] == main:
                lines.append(f"- {c['verdict']}")
        lines.append("")
    lines += ["## Segments", ""]
    main = report.get("main_metric", f"ndcg@{k}")
    for seg_kind in ("route", "history"):
        seg_names: list[str] = []
        for name in names:
            for s in report["configs"][name].get("segments", {}).get(seg_kind, {}):
                if s not in seg_names:
                    seg_names.append(s)
        if not seg_names:
            continue
        title = "route (as served)" if seg_kind == "route" else "training history length"
        lines.append(f"{main} by {title} (users in brackets)")
        lines.append("")
        lines.append("| config | " + " | ".join(seg_names) + " |")
        lines.append("|---|" + "---|" * len(seg_names))
        for name in names:
            segs = report["configs"][name].get("segments", {}).get(seg_kind, {})
            cells = []
            for s in seg_names:
                seg = segs.get(s)
                cells.append(f"{_num(seg['metrics'].get(main))} ({seg['n_users']})" if seg else "–")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    t = report.get("timings", {})
    if t:
        lines += ["## Timings (seconds)", ""]
        for key, val in t.items():
            if isinstance(val, dict):
                val = ", ".join(f"{k2} {_num(v2, 2)}" for k2, v2 in val.items())
            else:
                val = _num(val, 2)
            lines.append(f"- {key}: {val}")
        lines.append("")
    if plots:
        pngs = [p for p in plots if p.endswith(".png")]
        if pngs:
            lines += ["## Plots", ""] + [f"![{p}]({p})" for p in pngs] + [""]
    return "\n".join(lines)


def write_plots(report: dict[str, Any], out_dir: str) -> dict[str, str]:
    """Draw the headline metrics per configuration (with 95% intervals) and, when the report has
    history segments, the main metric by history length, as PNG files.

    Parameters
    ----------
    report : dict[str, Any]
        The evaluation report.
    out_dir : str
        Existing folder to write into.

    Returns
    -------
    dict[str, str]
        ``metrics_png`` and, with history segments, ``history_png`` -> path.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt

    k = report["k"]
    names = list(report["configs"])
    out: dict[str, str] = {}

    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5))
    for ax, m in zip(axes.ravel(), HEADLINE, strict=True):
        key = f"{m}@{k}"
        vals, lo, hi = [], [], []
        for name in names:
            c = report["configs"][name]
            v = c["metrics"].get(key, float("nan"))
            iv = c.get("intervals", {}).get(key) or [v, v]
            vals.append(v)
            lo.append(max(0.0, v - iv[0]))
            hi.append(max(0.0, iv[1] - v))
        ax.bar(range(len(names)), vals, yerr=[lo, hi], capsize=4, color="#4878a8")
        ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
        ax.set_title(key)
    fig.suptitle("metric by configuration (95% bootstrap interval over users)")
    fig.tight_layout()
    out["metrics_png"] = os.path.join(out_dir, "metrics.png")
    fig.savefig(out["metrics_png"], dpi=90)
    plt.close(fig)

    main = report.get("main_metric", f"ndcg@{k}")
    buckets: list[str] = []
    for name in names:
        for b in report["configs"][name].get("segments", {}).get("history", {}):
            if b not in buckets:
                buckets.append(b)
    if buckets:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        width = 0.8 / max(len(names), 1)
        for j, name in enumerate(names):
            segs = report["configs"][name].get("segments", {}).get("history", {})
            xs, ys, lo, hi = [], [], [], []
            for i, b in enumerate(buckets):
                seg = segs.get(b)
                if not seg:
                    continue
                v = seg["metrics"].get(main, float("nan"))
                iv = seg.get("intervals", {}).get(main) or [v, v]
                xs.append(i + (j - (len(names) - 1) / 2) * width)
                ys.append(v)
                lo.append(max(0.0, v - iv[0]))
                hi.append(max(0.0, iv[1] - v))
            ax.bar(xs, ys, width=width, yerr=[lo, hi], capsize=3, label=name)
        counts = []
        for b in buckets:
            n = next(
                (
                    report["configs"][nm]["segments"]["history"][b]["n_users"]
                    for nm in names
                    if b in report["configs"][nm].get("segments", {}).get("history", {})
                ),
                0,
            )
            counts.append(f"{b}\n({n} users)")
        ax.set_xticks(range(len(buckets)), counts)
        ax.set_xlabel("events in the user's training history")
        ax.set_ylabel(main)
        ax.legend(fontsize=8)
        ax.set_title(f"{main} by history length")
        fig.tight_layout()
        safe = main.replace("@", "_at_")
        out["history_png"] = os.path.join(out_dir, f"history_{safe}.png")
        fig.savefig(out["history_png"], dpi=90)
        plt.close(fig)
    return out
