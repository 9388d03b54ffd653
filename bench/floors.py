"""Fixed references measured beside the service in the same run (``bench/serve_bench.py``).

* A bare Flask app answering a constant JSON, under the same gunicorn worker and thread counts
  (gunicorn's own threaded worker: our ``gunicorn.conf.py`` hooks and worker class belong to
  the service). Our paths are reported as ratios to it, so a falling floor is not hidden
  behind a ratio to our own ``/healthz``.
* Optionally cornac.serving (``--cornac-venv``): cornac's single-model Flask server under the
  same gunicorn settings, a BPR model trained on ml-100k, its ``GET /recommend?uid=&k=10`` and
  its floor (``GET /recommend`` without ``uid``: a 400 answered before any model work).
  cornac is never a dependency of this project: it lives in a virtual environment outside the
  repository, made once with ``python -m venv /tmp/cornac-venv && /tmp/cornac-venv/bin/pip
  install cornac flask gunicorn``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

BARE_APP = """
from flask import Flask, jsonify
app = Flask(__name__)


@app.get("/healthz")
def healthz():
    return jsonify(status="ok")
"""

CORNAC_TRAIN = """
import sys, cornac
from cornac.data import Reader
from cornac.models import BPR
data = Reader().read(sys.argv[1], sep="\\t")
ds = cornac.data.Dataset.from_uir(data, seed=42)
BPR(k=50, max_iter=100, learning_rate=0.01, lambda_reg=0.01, seed=42).fit(ds).save(sys.argv[2])
"""


def gunicorn_settings(workers: int, threads: int) -> list[str]:
    """gunicorn's threaded worker with our worker and thread counts."""
    return ["-k", "gthread", "-w", str(workers), "--threads", str(threads)]


def start_bare(workers: int, threads: int, port: int, log_dir: str) -> subprocess.Popen:
    """The bare Flask app under gunicorn on 127.0.0.1:``port`` (its folder is a temporary
    directory left behind in ``log_dir``)."""
    where = tempfile.mkdtemp(prefix="bare-flask-", dir=log_dir)
    with open(os.path.join(where, "bare.py"), "w") as f:
        f.write(BARE_APP)
    log = open(os.path.join(log_dir, "bare_flask.log"), "w")
    return subprocess.Popen(
        [sys.executable, "-m", "gunicorn", *gunicorn_settings(workers, threads)]
        + ["--bind", f"127.0.0.1:{port}", "--log-level", "warning", "bare:app"],
        cwd=where,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def cornac_model(venv: str, ml100k: str, where: str) -> str:
    """The folder of a BPR model trained on ml-100k's ``u.data`` by cornac in ``venv``
    (trained once, kept in ``where``)."""
    model_dir = os.path.join(where, "cornac-bpr")
    found = os.path.join(model_dir, "BPR")
    if not os.path.isdir(found) or not os.listdir(found):
        subprocess.run(
            [os.path.join(venv, "bin", "python"), "-c", CORNAC_TRAIN]
            + [os.path.join(ml100k, "u.data"), model_dir],
            check=True,
        )
    return found


def start_cornac(
    venv: str, model: str, workers: int, threads: int, port: int, log_dir: str
) -> subprocess.Popen:
    """cornac.serving's app under gunicorn (same settings as the bare app) serving ``model``."""
    env = dict(os.environ, MODEL_PATH=model, MODEL_CLASS="cornac.models.BPR")
    env.pop("PYTHONPATH", None)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = "1"  # as our workers
    log = open(os.path.join(log_dir, "cornac.log"), "w")
    return subprocess.Popen(
        [os.path.join(venv, "bin", "python"), "-m", "gunicorn"]
        + gunicorn_settings(workers, threads)
        + ["--bind", f"127.0.0.1:{port}", "--log-level", "warning", "cornac.serving.app:app"],
        cwd=log_dir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def wait_http(base: str, path: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Wait until ``base + path`` answers with any HTTP status."""
    import http.client
    import time
    import urllib.parse

    u = urllib.parse.urlsplit(base)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"{base}: server exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection(u.hostname, u.port, timeout=2)
            conn.request("GET", path)
            conn.getresponse().read()
            conn.close()
            return
        except OSError:
            time.sleep(0.25)
    raise SystemExit(f"{base}{path}: no answer after {timeout:.0f} s")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 30 s."""
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


class FloorServers:
    """The bare Flask app and (with ``cornac_venv``) cornac.serving, started for a ``with``
    block; ``scenarios`` lists what to drive: ``(name, base URL, request specs)``.

    Parameters
    ----------
    workers, threads : int
        gunicorn's worker and thread counts (the service's).
    log_dir : str
        Where logs, the bare app and the cornac model are kept.
    cornac_venv : str or None
        A virtual environment with cornac, flask and gunicorn; None: no cornac.
    ml100k : str
        The ml-100k folder (``u.data``) cornac's model is trained on.
    """

    def __init__(self, workers, threads, log_dir, cornac_venv=None, ml100k=None):
        self.workers, self.threads, self.log_dir = workers, threads, log_dir
        self.cornac_venv, self.ml100k = cornac_venv, ml100k
        self.procs: list[subprocess.Popen] = []
        self.scenarios: list[tuple[str, str, list]] = []

    def __enter__(self) -> FloorServers:
        try:
            return self._start()
        except BaseException:
            self.__exit__(None, None, None)  # no server left behind
            raise

    def _start(self) -> FloorServers:
        from servekit import free_port

        port = free_port()
        bare = start_bare(self.workers, self.threads, port, self.log_dir)
        self.procs.append(bare)
        base = f"http://127.0.0.1:{port}"
        wait_http(base, "/healthz", bare)
        self.scenarios.append(("bare Flask, constant JSON", base, [("GET", "/healthz", None)]))
        if self.cornac_venv:
            model = cornac_model(self.cornac_venv, self.ml100k, self.log_dir)
            port = free_port()
            proc = start_cornac(
                self.cornac_venv, model, self.workers, self.threads, port, self.log_dir
            )
            self.procs.append(proc)
            base = f"http://127.0.0.1:{port}"
            wait_http(base, "/recommend", proc)
            users = [str(u) for u in range(1, 944)]
            self.scenarios.append(
                (
                    "cornac.serving recommend",
                    base,
                    [("GET", f"/recommend?uid={u}&k=10", None) for u in users],
                )
            )
            self.scenarios.append(
                ("cornac.serving floor (400)", base, [("GET", "/recommend", None)])
            )
        return self

    def __exit__(self, *exc) -> None:
        for proc in self.procs:
            stop(proc)
