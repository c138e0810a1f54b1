"""Wall and CPU time spent inside chosen methods, for the benchmarks' split of a run by stage."""

from __future__ import annotations

import time
from collections import defaultdict


class Timers:
    """Wall time spent inside wrapped methods, by label (``LABEL_s``), and CPU time of all the
    process's threads beside it (``LABEL_cpu_s``)."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self._undo = []

    def wrap(self, owner, name: str, label: str) -> None:
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            start, cpu = time.perf_counter(), time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - start
                self.seconds[label[:-2] + "_cpu_s"] += time.process_time() - cpu

        setattr(owner, name, timed)
        self._undo.append((owner, name, original))

    def restore(self) -> None:
        for owner, name, original in reversed(self._undo):
            setattr(owner, name, original)
