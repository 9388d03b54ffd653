"""The scale benchmark's report: the table of one run, the summary across sizes and the plot of
cost against size (``bench/scale_bench.py --plot``)."""

from __future__ import annotations

import json


def table(record: dict) -> str:
    """The run as a Markdown table.

    Parameters
    ----------
    record : dict
        A run's record.

    Returns
    -------
    str
        The table, with a heading line.
    """
    mib = 2**20

    def size(b: int) -> str:
        for unit, k in (("GiB", 2**30), ("MiB", mib), ("KiB", 1024)):
            if b >= k:
                return f"{b / k:,.1f} {unit}"
        return f"{b} B"

    lines = [
        f"size {record['size']}: {record['items']:,} items, {record['users']:,} shoppers, "
        f"{record['events']:,} events; {record['database']}; {record['machine']}; "
        f"step limit {record['step_timeout_s']:.0f} s",
        "",
        "| step | seconds | p50 / p99 ms | peak RSS (tree) | disk | status |",
        "|---|---|---|---|---|---|",
    ]
    for s in record["steps"]:
        lat = s.get("latency")
        secs = (
            f"{s['seconds'] * 1000:.0f} ms"
            if "similar" in s["step"] and "seconds" in s
            else (f"{s['seconds']:.1f}" if "seconds" in s else "")
        )
        lines.append(
            "| {} | {} | {} | {} | {} | {} |".format(
                s["step"],
                secs,
                f"{lat['p50_ms']:.1f} / {lat['p99_ms']:.1f} (n={lat['n']})" if lat else "",
                size(s["peak_rss"]) if s.get("peak_rss") else "",
                size(s["disk"]) if s.get("disk") else "",
                s["status"],
            )
        )
    return "\n".join(lines)


def summary(runs: list[dict]) -> str:
    """One Markdown table across sizes: each step's seconds (latencies: p50 / p99 ms) and peak
    RSS, a column per (size, database), from the latest run of each.

    Parameters
    ----------
    runs : list of dict
        Run records (the results file's lines), oldest first.

    Returns
    -------
    str
        The table.
    """
    latest: dict[tuple, dict] = {}
    for r in runs:
        latest[(r["events"], r["database"])] = r
    cols = sorted(latest.values(), key=lambda r: (r["database"], r["events"]))
    steps: list[str] = []
    for r in cols:
        steps += [s["step"] for s in r["steps"] if s["step"] not in steps]
    head = [f"{r['size']} {r['database']} ({r['events']:,} ev.)" for r in cols]
    lines = ["| step | " + " | ".join(head) + " |", "|---|" + "---|" * len(cols)]
    for name in steps:
        cells = []
        for r in cols:
            st = next((s for s in r["steps"] if s["step"] == name), None)
            if st is None:
                cells.append("")
            elif not st["status"].startswith("ok"):
                cells.append(st["status"].split(" for ")[0][:60])
            elif st.get("latency"):
                lat = st["latency"]
                cells.append(f"{lat['p50_ms']:.1f} / {lat['p99_ms']:.1f} ms")
            elif "similar" in name:
                cells.append(f"{st['seconds'] * 1000:.0f} ms")
            else:
                rss = f", {st['peak_rss'] / 2**30:.2f} GiB" if st.get("peak_rss") else ""
                cells.append(f"{st['seconds']:.1f} s{rss}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: str, out: str) -> None:
    """Cost against size (events) from the results file: seconds per step group and peak RSS.

    Parameters
    ----------
    results : str
        The JSON-lines results file.
    out : str
        The PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(results, encoding="utf-8") as f:
        runs = [json.loads(line) for line in f if line.strip()]
    if not runs:
        raise SystemExit(f"{results} has no runs")
    print(summary(runs))
    print()
    latest: dict[tuple, dict] = {}
    for r in runs:  # the latest run per (size, database)
        latest[(r["events"], r["database"])] = r
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    groups = ("import csv", "train, all", "serve: ready")
    for db in sorted({k[1] for k in latest}):
        rs = sorted((r for k, r in latest.items() if k[1] == db), key=lambda r: r["events"])
        x = [r["events"] for r in rs]
        for g in groups:
            ys = [next((s.get("seconds") for s in r["steps"] if s["step"] == g), None) for r in rs]
            ax_t.plot(x, ys, marker="o", label=f"{g} ({db})")
            ms = [next((s.get("peak_rss") for s in r["steps"] if s["step"] == g), None) for r in rs]
            ax_m.plot(x, [m / 2**30 if m else None for m in ms], marker="o", label=f"{g} ({db})")
    for ax, label in ((ax_t, "seconds"), (ax_m, "peak RSS, GiB")):
        ax.set_xscale("log")
        ax.set_xlabel("events (S, M, L)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    ax_t.legend(fontsize=7)
    fig.suptitle("recsys scale benchmark: cost against size (bench/scale_bench.py)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")
