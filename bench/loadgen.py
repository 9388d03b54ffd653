"""Load generation for the serving benchmarks: ``wrk`` with a Lua script of request specs, or
Python threads with keep-alive ``http.client`` connections when wrk is missing."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import tempfile
import threading
import time
import urllib.parse

# -- load generation -----------------------------------------------------------------------------
# A request spec: (method, path template, body template or None). "UNIQ" in either is replaced by a
# value unique to the request (client id + counter), so keys and idempotency ids never repeat.
Spec = tuple[str, str, str | None]

WRK_LUA = r"""
local specs = %(specs)s
local counter = 0
local me = 0
local next_id = 0
setup = function(thread)
  next_id = next_id + 1
  thread:set("client", next_id)
end
init = function(args)
  me = client or 0
end
request = function()
  counter = counter + 1
  local s = specs[((counter + me * 7919) %% #specs) + 1]
  local uniq = "%(run)s-" .. me .. "-" .. counter
  local path = string.gsub(s[2], "UNIQ", uniq)
  if s[3] ~= nil then
    local body = string.gsub(s[3], "UNIQ", uniq)
    return wrk.format(s[1], path, {["Content-Type"] = "application/json"}, body)
  end
  return wrk.format(s[1], path)
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {\"requests\": %%d, \"duration_us\": %%d, \"p50\": %%d, \"p95\": %%d, " ..
    "\"p99\": %%d, \"errors\": %%d, \"status_errors\": %%d}\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(95),
    latency:percentile(99), e.connect + e.read + e.write + e.timeout, e.status))
end
"""


def _lua_str(s: str | None) -> str:
    return "nil" if s is None else json.dumps(s)  # JSON string escapes are valid Lua


def run_wrk(base: str, specs: list[Spec], concurrency: int, duration: float, run_id: str) -> dict:
    lua = WRK_LUA % {
        "specs": "{"
        + ",".join(f"{{{_lua_str(m)},{_lua_str(p)},{_lua_str(b)}}}" for m, p, b in specs)
        + "}",
        "run": run_id,
    }
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(lua)
        script = f.name
    try:
        threads = max(1, min(concurrency, 2))
        out = subprocess.run(
            [
                "wrk",
                f"-t{threads}",
                f"-c{concurrency}",
                f"-d{max(1, round(duration))}s",
                "--timeout",
                "5s",
                "-s",
                script,
                base,
            ],
            capture_output=True,
            text=True,
            timeout=duration + 30,
        )
    finally:
        os.unlink(script)
    line = next((x for x in out.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {out.stdout[-500:]} {out.stderr[-500:]}")
    r = json.loads(line[len("WRKJSON ") :])
    secs = r["duration_us"] / 1e6
    return {
        "requests": r["requests"],
        "rps": r["requests"] / secs if secs else 0.0,
        "p50_ms": r["p50"] / 1000,
        "p95_ms": r["p95"] / 1000,
        "p99_ms": r["p99"] / 1000,
        "errors": r["errors"] + r["status_errors"],
    }


def run_python(
    base: str, specs: list[Spec], concurrency: int, duration: float, run_id: str
) -> dict:
    u = urllib.parse.urlsplit(base)
    stop_at = time.monotonic() + duration
    lat: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency

    def client(k: int) -> None:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=5)
        counter = 0
        while time.monotonic() < stop_at:
            counter += 1
            m, p, b = specs[(counter + k * 7919) % len(specs)]
            uniq = f"{run_id}-{k}-{counter}"
            p = p.replace("UNIQ", uniq)
            headers = {}
            body = None
            if b is not None:
                body = b.replace("UNIQ", uniq)
                headers["Content-Type"] = "application/json"
            t0 = time.perf_counter()
            try:
                conn.request(m, p, body=body, headers=headers)
                r = conn.getresponse()
                r.read()
                if r.status >= 400:
                    errors[k] += 1
            except (OSError, http.client.HTTPException):
                errors[k] += 1
                conn.close()
                conn = http.client.HTTPConnection(u.hostname, u.port, timeout=5)
                continue
            lat[k].append(time.perf_counter() - t0)
        conn.close()

    t0 = time.monotonic()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    secs = time.monotonic() - t0
    all_lat = sorted(x for xs in lat for x in xs)

    def pct(q: float) -> float:
        return all_lat[min(len(all_lat) - 1, int(q * len(all_lat)))] * 1000 if all_lat else 0.0

    return {
        "requests": len(all_lat),
        "rps": len(all_lat) / secs,
        "p50_ms": pct(0.50),
        "p95_ms": pct(0.95),
        "p99_ms": pct(0.99),
        "errors": sum(errors),
    }
