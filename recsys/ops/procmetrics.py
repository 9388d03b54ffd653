"""Process metrics (``process_*``: CPU seconds, resident memory, open file descriptors, start
time) for every process of a gunicorn server, labelled by ``pid``.

Without gunicorn the default registry's own ``ProcessCollector`` covers the one process. Under
gunicorn ``/metrics`` is answered by whichever worker the scrape reached, and that worker's
``/proc/self`` alone would say nothing of the others, so this collector reads
``/proc/<pid>`` of the master (the worker's parent) and each of its children instead
(prometheus_client's ``ProcessCollector`` with a ``pid`` callable; Linux only, like it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from prometheus_client import ProcessCollector
from prometheus_client.metrics_core import Metric


def server_pids() -> list[int]:
    """This process's parent (the gunicorn master) and its children (the workers); just this
    process where ``/proc`` cannot say.

    Returns
    -------
    list of int
        The master's pid then its workers' (sorted), or ``[os.getpid()]``.
    """
    parent = os.getppid()
    try:
        with open(f"/proc/{parent}/task/{parent}/children") as f:
            children = [int(x) for x in f.read().split()]
    except OSError:
        return [os.getpid()]
    return [parent, *sorted(children)] if os.getpid() in children else [os.getpid()]


class ServerProcessCollector:
    """Prometheus collector of the ``process_*`` metrics of every server process (the gunicorn
    master and its workers), each sample labelled by ``pid``.
    """

    def collect(self) -> Iterator[Metric]:
        """The process metric families, one sample per server process.

        Returns
        -------
        Iterator[Metric]
            One family per metric name, samples labelled with ``pid``.
        """
        families: dict[str, Metric] = {}
        for pid in server_pids():
            collector = ProcessCollector(pid=lambda p=pid: p, registry=None)
            for family in collector.collect():
                out = families.setdefault(
                    family.name, Metric(family.name, family.documentation, family.type)
                )
                for s in family.samples:
                    out.add_sample(s.name, {**s.labels, "pid": str(pid)}, s.value)
        yield from families.values()
