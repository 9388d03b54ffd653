"""Helpers for tests that run servers as subprocesses on 127.0.0.1."""

from __future__ import annotations

import signal
import socket
import subprocess


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen, log=None, timeout: float = 20) -> None:
    """SIGTERM (gunicorn's graceful stop), SIGKILL if it has not exited within ``timeout``;
    then close its log file."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if log is not None:
        log.close()
