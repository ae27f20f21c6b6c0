"""Sharing the CPU with other work: how many threads a step uses, and at which priority training runs.

On an idle machine every core helps each OpenMP parallel region of a step. When another CPU-bound
process shares the cores, a region waits at its closing barrier for a thread the OS has
descheduled, and each wait can cost a scheduler time slice: with ~200 regions per decode step,
serving beside a training run kept 1% of its idle speed, and the training run 2% of its own
(``benchmarks/shared_cpu.py``). :class:`ThreadGovernor` watches each step (a decode step, a
training micro-batch) and runs the next one with all threads or with one (no barriers at all):

* the machine's count of running threads (``procs_running`` in ``/proc/stat``, sampled after steps
  at most every 100 ms) less this process's threads in state R says how many other threads want
  the cores; when on average half a thread or more does, steps drop to one thread, and when, after
  half a second on one thread, the others leave room for all threads again, steps go back to all;
* a long step (a training micro-batch) whose process got less than 80% CPU time per thread drops
  at once: contended, the next one could take a minute; and :meth:`~ThreadGovernor.check`, called
  between a step's layers, drops in the middle of one that has already taken twice its usual time
  so starved (a neighbour started during the step: finishing it on all threads took 36 s, not 1.2);
* every drop is a trial: when the first steps on one thread are not faster (seconds per row) than
  the last ones on all threads (the other threads were a client, a short burst, or a process of
  lower priority), all threads come back and the next drop waits 1, 2, 4 … up to 30 s, so an idle
  machine keeps its speed; where one thread won, short steps (decoding) give all threads another
  try 1, 2, 4 … up to 30 s later (one thread may have won against a slow start); long ones
  (training) do not, as a micro-batch starved on all threads can take a minute;
* with ``share_above``, steps of more work than that (a batch of streams) drop beside a neighbour
  of lower priority without a trial: they leave it a core even where all threads would be faster.

Training runs at a lower priority (:func:`set_priority`, nice 19 by default), so a server's steps
on all threads beside it lose only the neighbour's short time slices: one or two interactive
streams decode on both cores (their trials keep all threads), while a batch of streams and the
training run settle on one thread each, side by side.
"""

from __future__ import annotations

import os
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from statistics import median_high

#: A long step keeps all threads while the process gets at least this share of CPU time per thread.
MIN_SHARE = 0.8
#: A step this long (seconds) decides alone (a training micro-batch).
LONG_STEP = 0.25
#: Other processes' running threads, on average, at which steps drop to one thread (on trial);
#: and at which steps of more than ``share_above`` work leave a core (no trial: a neighbour that
#: always wants a core, over the last ``2 * MIN_SAMPLES`` samples, not a sampling artefact).
OTHERS_DROP, OTHERS_SHARE = 0.5, 0.9
#: Samples of the running threads that decide, at least; and the seconds between two (a sample
#: reads the state of each of this process's threads: ~0.5 ms with 60 of them).
MIN_SAMPLES, SAMPLE_SECONDS = 5, 0.1
#: Steps on one thread that a drop's trial compares with the last ones on all threads.
TRIAL_STEPS = 8
#: Seconds on one thread before all threads may come back.
SINGLE_SECONDS = 0.5
#: Seconds without a drop after a failed trial, the first time and at most (doubling between).
HOLD_SECONDS, MAX_HOLD_SECONDS = 1.0, 30.0


def available_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def running_threads() -> int | None:
    """Threads of *other* processes running or ready to run now: the machine's ``procs_running``
    less this process's threads in state R; None where unknown (not Linux). Right after an OpenMP
    region it reads one thread too many now and then (one that none of this process's threads shows
    as running when read): in 7% of the samples on an idle machine, up to 30% beside 8 busy streams
    (2-core AVX-512 Xeon, nothing else running)."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            machine = next(int(line.split()[1]) for line in f if line.startswith("procs_running"))
        mine = sum((fields := _stat_fields(f"/proc/self/task/{tid}/stat")) is not None and fields[0] == "R"
                   for tid in os.listdir("/proc/self/task"))  # fmt: skip
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return max(0, machine - mine)


def _stat_fields(path: str) -> list[str] | None:
    """The fields of a ``/proc`` ``stat`` file after the command name (state first); None once it ended."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def lower_priority_running() -> bool:
    """Whether a process of lower priority (a greater nice value) than this one is running or ready
    to run now, by its main thread (a training run's loop); False where unknown. Reads every
    process's ``/proc/<pid>/stat``: about 1 ms with 70 processes (2-core AVX-512 Xeon)."""
    try:
        own = os.getpriority(os.PRIO_PROCESS, 0)
        pids = [e.name for e in os.scandir("/proc") if e.name.isdigit() and e.name != str(os.getpid())]
    except (OSError, AttributeError):
        return False
    return any(
        (fields := _stat_fields(f"/proc/{pid}/stat")) is not None and fields[0] == "R" and int(fields[16]) > own
        for pid in pids
    )


def set_priority(nice: int) -> int:
    """Lower this process's priority by ``nice`` (never raises it); return its niceness after.

    Where Linux groups the scheduler's entities by session (``sched_autogroup``), a process's nice
    value weighs only against its own session: a session leader (a training child started in its own
    session) lowers its session's weight as well, so that it yields to a server in another session.
    """
    if nice > 0 and hasattr(os, "nice"):
        try:
            after = os.nice(nice)
        except OSError:
            pass
        else:
            if os.getsid(0) == os.getpid():
                _lower_autogroup(after)
            return after
    return os.getpriority(os.PRIO_PROCESS, 0) if hasattr(os, "getpriority") else 0


def own_session() -> None:
    """Go on in a session of its own, whose scheduler autogroup :func:`set_priority` then lowers.

    It forks: the child goes on in a new session, and this process stays in its process group (where
    a terminal's Ctrl-C and a supervisor's signals reach it), passes on the signals it gets (SIGINT,
    SIGTERM, SIGHUP, SIGQUIT, unless ignored; Ctrl-Z and ``fg`` stop and continue both), waits and
    exits with the child's status; the child gets SIGTERM if this process dies. Call it before any thread starts.
    A no-op where it cannot help: not Linux, no autogroups, already a session leader.
    """
    if not (hasattr(os, "setsid") and os.path.exists("/proc/self/autogroup")) or os.getsid(0) == os.getpid():
        return
    child = os.fork()
    if child == 0:
        os.setsid()
        _exit_with_parent()
        return

    def forward(signum: int, _frame: object) -> None:
        if signum == signal.SIGTSTP:  # Ctrl-Z stops both; fg's SIGCONT reaches both too
            os.kill(child, signal.SIGSTOP)
            os.kill(os.getpid(), signal.SIGSTOP)
        else:
            os.kill(child, signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGTSTP, signal.SIGCONT):
        if signal.getsignal(signum) != signal.SIG_IGN:  # one ignored here (a background job's Ctrl-C) stays so
            signal.signal(signum, forward)
    try:
        _, status = os.waitpid(child, 0)  # returns once it has ended (retried across the forwarded signals)
    except ChildProcessError:
        os._exit(1)
    code = os.waitstatus_to_exitcode(status)
    os._exit(code if code >= 0 else 128 - code)


def _exit_with_parent() -> None:
    """Have the kernel send this process SIGTERM when its parent ends (Linux ``PR_SET_PDEATHSIG``)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _lower_autogroup(nice: int) -> None:
    """Set this session's autogroup niceness to ``nice`` where it is lower (no-op without autogroups)."""
    try:
        with open("/proc/self/autogroup", "r+", encoding="ascii") as f:
            if int(f.read().split()[-1]) < nice:
                f.seek(0)
                f.write(str(nice))
    except (OSError, ValueError, IndexError):
        pass


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
    #: Other processes' running threads now (:func:`running_threads`).
    running: Callable[[], int | None] = lambda: running_threads()
    #: Whether a process of lower priority runs now (:func:`lower_priority_running`).
    lower_running: Callable[[], bool] = lambda: lower_priority_running()
    cores: int = field(default_factory=lambda: available_cores())
    #: Steps of more than this much work (recent median; a decode step's rows: a batch of streams)
    #: leave a neighbour of lower priority that wants a core (a training run) one, without a trial:
    #: all threads would be faster, as it only gets what they leave, but it would get next to
    #: nothing. Smaller steps (one or two interactive streams) keep all threads wherever a trial
    #: finds them faster; a neighbour of equal priority gets the scheduler's fair share and trials.
    #: None: every drop is a trial.
    share_above: int | None = None
    current: int = 0
    #: How many times steps dropped to one thread, and how many steps ran on fewer threads than they may.
    drops: int = 0
    shared_steps: int = 0
    _others: deque = field(default_factory=lambda: deque(maxlen=2 * MIN_SAMPLES))
    #: Wall seconds per unit of work of the last steps on the current thread count.
    _walls: deque = field(default_factory=lambda: deque(maxlen=TRIAL_STEPS))
    #: Work of the last steps (``share_above``).
    _works: deque = field(default_factory=lambda: deque(maxlen=TRIAL_STEPS))
    #: On one thread to share the cores with a neighbour (``share_above``), not on trial.
    _sharing: bool = False
    #: When :attr:`lower_running` was last asked (at most once a second).
    _asked_lower: float = -HOLD_SECONDS
    _step: tuple[float, float] = (0.0, 0.0)
    _in_step: bool = False
    _sampled: float = 0.0
    _since: float = 0.0
    #: A drop on trial: the median step (per unit of work) on all threads that one thread must beat.
    _trial: float | None = None
    _hold_until: float = 0.0
    _hold: float = HOLD_SECONDS
    #: A trial that one thread won: when all threads try again, and the wait after the next win.
    _retry_at: float = 0.0
    _retry: float = HOLD_SECONDS

    def __post_init__(self) -> None:
        self.threads = max(1, min(self.threads, self.cores)) if self.adaptive else max(1, self.threads)
        self._use(self.threads, self.clock()[0])

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
        self._step, self._in_step = self.clock(), True

    def stop(self, work: int = 1) -> None:
        """End a step that did ``work`` units (a decode step's rows: trials compare seconds per unit)."""
        self._in_step = False
        if not self.adaptive or self.threads == 1:
            return None
        now, cpu = self.clock()
        wall, full = now - self._step[0], self.current == self.threads
        self.shared_steps += not full
        self._walls.append(wall / max(1, work))
        self._works.append(work)
        if full and self._starved(wall, cpu, LONG_STEP):
            return self._drop(now)
        retry = wall < LONG_STEP and now >= self._retry_at  # one thread won a while ago: all try again
        if not full and self._trial is None and (self._sharing or retry) and not self._bulk():
            return self._use(self.threads, now)
        if self._trial is not None and len(self._walls) == self._walls.maxlen:
            return self._judge(now)
        if now - self._sampled < SAMPLE_SECONDS or (running := self.running()) is None:
            return None
        self._sampled = now
        self._others.append(running)
        if len(self._others) < MIN_SAMPLES:
            return None
        others = sum(self._others) / len(self._others)
        share = full and self._leaves_a_core(others, now)
        if full and (share or others >= OTHERS_DROP and now >= self._hold_until):
            self._drop(now, trial=not share)
        elif not full and now - self._since >= SINGLE_SECONDS and self.cores - others > self.threads - OTHERS_DROP:
            self._use(self.threads, now)
        return None

    def _bulk(self) -> bool:
        """Whether the recent steps are a batch (``share_above``)."""
        return self.share_above is not None and median_high(self._works) > self.share_above

    def _leaves_a_core(self, others: float, now: float) -> bool:
        """Whether a batch should leave a core to a neighbour of lower priority that has wanted one in
        ``OTHERS_SHARE`` of a full window of samples (that neighbour is asked for at most once a second)."""
        if not (len(self._others) == self._others.maxlen and others >= OTHERS_SHARE and self._bulk()):
            return False
        if now - self._asked_lower < HOLD_SECONDS:
            return False
        self._asked_lower = now
        return self.lower_running()

    def check(self) -> None:
        """Within a step (between a training micro-batch's layers): drop to one thread now if the step
        has taken twice the usual (median) step, and at least ``LONG_STEP``, with too little CPU time per thread."""
        if not (self.adaptive and self._in_step and self._walls and 1 < self.current == self.threads):
            return  # no usual time yet: the check after the step decides
        now, cpu = self.clock()
        wall = now - self._step[0]
        if wall >= LONG_STEP and self._starved(wall, cpu, 2 * median_high(self._walls)):
            self._drop(now)

    def _starved(self, wall: float, cpu: float, at_least: float) -> bool:
        """Whether the step so far took ``at_least`` seconds with under ``MIN_SHARE`` CPU time per thread."""
        return wall >= at_least and (cpu - self._step[1]) / wall < MIN_SHARE * self.current

    def _drop(self, now: float, trial: bool = True) -> None:
        self.drops += 1
        self._trial = median_high(self._walls) if trial else None
        self._use(1, now)
        self._sharing = not trial

    def _judge(self, now: float) -> None:
        """End a drop's trial: keep one thread if its steps are faster, else all threads for a while."""
        single, full, self._trial = median_high(self._walls), self._trial, None
        if single < full:
            self._hold = HOLD_SECONDS
            self._retry_at, self._retry = now + self._retry, min(2 * self._retry, MAX_HOLD_SECONDS)
            return
        self._retry = HOLD_SECONDS
        self._hold_until = now + self._hold
        self._hold = min(2 * self._hold, MAX_HOLD_SECONDS)
        self._use(self.threads, now)

    def _use(self, n: int, now: float) -> None:
        if n != self.current:
            self.apply(n)
            self.current = n
            self._sharing = False
            self._others.clear()
            self._walls.clear()
            self._since = now
