"""Sharing the CPU with other work: how many threads a step uses, and at which priority training runs.

On an idle machine every core helps each OpenMP parallel region of a step. When another CPU-bound
process shares the cores, a region waits at its closing barrier for a thread the OS has
descheduled, and each wait can cost a scheduler time slice: with ~200 regions per decode step,
serving beside a training run kept 1% of its idle speed, and the training run 2% of its own
(``benchmarks/shared_cpu.py``). :class:`ThreadGovernor` watches each step (a decode step, a
training micro-batch) and runs the next one with all threads or with one (no barriers at all):

* the machine's count of running threads (``procs_running`` in ``/proc/stat``, sampled after steps
  at most every 10 ms) less this process's own says how many other threads want the cores; when
  on average half a thread or more does, steps drop to one thread, and when, over half a second
  on one thread, the others leave room for all threads again, steps go back to all;
* a long step (a training micro-batch) whose process got less than 80% CPU time per thread drops
  at once: contended, the next one could take a minute.

Two processes governed so (a server and a training run) settle on one thread each, side by side.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

#: A long step keeps all threads while the process gets at least this share of CPU time per thread.
MIN_SHARE = 0.8
#: A step this long (seconds) decides alone (a training micro-batch).
LONG_STEP = 0.25
#: Other running threads, on average, at which steps drop to one thread.
OTHERS_DROP = 0.5
#: Samples of the running threads that decide, at least; and the seconds between two.
MIN_SAMPLES, SAMPLE_SECONDS = 8, 0.01
#: Seconds on one thread before all threads may come back.
SINGLE_SECONDS = 0.5


def available_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def running_threads() -> int | None:
    """Threads running or ready to run on the whole machine now (``procs_running``); None where unknown."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            for line in f:
                if line.startswith("procs_running"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def set_priority(nice: int) -> int:
    """Lower this process's priority by ``nice`` (never raises it); return its niceness after."""
    if nice > 0 and hasattr(os, "nice"):
        try:
            return os.nice(nice)
        except OSError:
            pass
    return os.getpriority(os.PRIO_PROCESS, 0) if hasattr(os, "getpriority") else 0


@dataclass
class ThreadGovernor:
    """Chooses each step's thread count: ``threads`` while they run side by side, else one.

    ``apply`` sets a thread count (``torch.set_num_threads`` on the thread that runs the steps);
    call :meth:`start` before a step and :meth:`stop` after it (or run the step ``with`` it).
    ``adaptive=False`` keeps ``threads``.
    """

    threads: int
    apply: Callable[[int], None]
    adaptive: bool = True
    #: (wall seconds, process CPU seconds) now.
    clock: Callable[[], tuple[float, float]] = lambda: (time.perf_counter(), time.process_time())
    #: The machine's running threads now (:func:`running_threads`).
    running: Callable[[], int | None] = lambda: running_threads()
    cores: int = field(default_factory=lambda: available_cores())
    current: int = 0
    #: How many times steps dropped to one thread.
    drops: int = 0
    _others: deque = field(default_factory=lambda: deque(maxlen=2 * MIN_SAMPLES))
    _step: tuple[float, float] = (0.0, 0.0)
    _sampled: float = 0.0
    _since: float = 0.0

    def __post_init__(self) -> None:
        self.threads = max(1, min(self.threads, self.cores)) if self.adaptive else max(1, self.threads)
        self._use(self.threads, time.perf_counter())

    @property
    def shared(self) -> bool:
        """Whether steps run on fewer threads than they may because the cores are shared."""
        return self.current < self.threads

    def __enter__(self) -> ThreadGovernor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._step = self.clock()

    def stop(self) -> None:
        if not self.adaptive or self.threads == 1:
            return None
        now, cpu = self.clock()
        wall, full = now - self._step[0], self.current == self.threads
        if full and wall >= LONG_STEP and (cpu - self._step[1]) / wall < MIN_SHARE * self.current:
            return self._drop(now)
        if now - self._sampled < SAMPLE_SECONDS or (running := self.running()) is None:
            return None
        self._sampled = now
        self._others.append(max(0, running - self.current))
        if len(self._others) < MIN_SAMPLES:
            return None
        others = sum(self._others) / len(self._others)
        if full and others >= OTHERS_DROP:
            self._drop(now)
        elif not full and now - self._since >= SINGLE_SECONDS and self.cores - others > self.threads - OTHERS_DROP:
            self._use(self.threads, now)
        return None

    def _drop(self, now: float) -> None:
        self.drops += 1
        self._use(1, now)

    def _use(self, n: int, now: float) -> None:
        if n != self.current:
            self.apply(n)
            self.current = n
            self._others.clear()
            self._since = now
