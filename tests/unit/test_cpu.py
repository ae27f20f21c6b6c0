"""Sharing the CPU: the thread governor's decisions (fake clocks), and training's OS priority."""

import os
import random
import subprocess
import sys
import time

import pytest

from tuneloop.cpu import (
    HOLD_SECONDS,
    MIN_SAMPLES,
    SAMPLE_SECONDS,
    TRIAL_STEPS,
    ThreadGovernor,
    lower_priority_running,
    running_threads,
    set_priority,
)


class FakeMachine:
    """A clock whose steps take ``wall`` seconds and ``cpu`` process CPU seconds, and a running-threads count.

    By default a step takes 25 ms on two threads and 40 ms on one, and 250 ms on two threads while
    another process runs (the barriers wait for a descheduled thread) unless ``barriers_hurt`` is off.
    """

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0
        self.others = 0  # threads of other processes running
        self.lower = False  # whether one of them runs at a lower priority
        self.barriers_hurt = True
        self.applied: list[int] = []

    def step_wall(self, threads: int) -> float:
        if threads == 1:
            return 0.04
        return 0.25 if self.others and self.barriers_hurt else 0.025

    def clock(self) -> tuple[float, float]:
        return self.wall, self.cpu

    def governor(self, threads: int = 2, adaptive: bool = True, share_above: int | None = None) -> ThreadGovernor:
        g = ThreadGovernor(threads, self.applied.append, adaptive, clock=self.clock, cores=2, share_above=share_above)
        g.running = lambda: self.others
        g.lower_running = lambda: self.lower
        return g

    def step(self, g: ThreadGovernor, wall: float | None = None, share: float = 0.95, work: int = 1) -> None:
        """One step of ``work`` rows in which each of the governor's threads ran ``share`` of the time."""
        g.start()
        wall = self.step_wall(g.current) if wall is None else wall
        self.wall += wall
        self.cpu += wall * share * g.current
        g.stop(work)


def test_full_threads_while_no_one_else_runs():
    m = FakeMachine()
    g = m.governor()
    for _ in range(200):
        m.step(g)
    assert g.current == 2 and not g.shared and g.drops == 0 and m.applied == [2]


def test_drops_to_one_thread_beside_others_and_comes_back_when_they_leave():
    m = FakeMachine()
    g = m.governor()
    m.others = 1  # another process's thread wants a core (each contended step is sampled: 250 ms)
    for _ in range(MIN_SAMPLES - 1):
        m.step(g)
    assert g.current == 2  # a few samples decide, not one
    m.step(g)
    assert g.current == 1 and g.shared and g.drops == 1
    threads = run(m, g, 30.0)  # the neighbour keeps running and one thread is faster, so one thread each,
    assert g.current == 1 and g.drops <= 6  # all threads tried again after 1, 2, 4, 8 ... s
    assert threads.count(2) < len(threads) / 20
    m.others = 0
    run(m, g, 2 * SAMPLE_SECONDS)  # the samples taken beside the neighbour still count
    assert g.current == 1
    run(m, g, 2 * MIN_SAMPLES * SAMPLE_SECONDS)
    assert g.current == 2 and m.applied[-2:] == [1, 2] and g.drops == m.applied.count(1)


def test_a_drop_that_does_not_help_is_undone_and_retried_ever_later():
    m = FakeMachine()
    g = m.governor()
    m.others, m.barriers_hurt = 1, False  # e.g. a benchmark client: other threads run, barriers do not suffer
    while g.drops == 0:
        m.step(g)
    assert g.current == 1 and m.wall <= (MIN_SAMPLES + 1) * SAMPLE_SECONDS
    for _ in range(TRIAL_STEPS):  # the trial: one thread is slower (40 ms vs 25 ms)
        m.step(g)
    assert g.current == 2
    drops_at = []
    for _ in range(4000):  # 100 s
        m.step(g)
        if g.drops > 1 + len(drops_at):
            drops_at.append(m.wall)
    gaps = [b - a for a, b in zip(drops_at, drops_at[1:], strict=False)]
    assert gaps[0] >= 2 * HOLD_SECONDS and all(b > a for a, b in zip(gaps[:4], gaps[1:5], strict=True))
    assert len(drops_at) < 10 and m.applied.count(1) == g.drops  # a few short trials in 100 s
    m.barriers_hurt = True  # now the neighbour does slow the barriers: the next drop sticks
    for _ in range(2000):
        m.step(g)
    assert g.current == 1


def run(m: FakeMachine, g: ThreadGovernor, seconds: float, work: int = 1) -> list[int]:
    """Steps of ``work`` rows for ``seconds`` of the fake clock; the thread count of each."""
    end, threads = m.wall + seconds, []
    while m.wall < end:
        m.step(g, work=work)
        threads.append(g.current)
    return threads


def test_a_batch_leaves_a_lower_priority_neighbour_a_core_and_interactive_streams_take_both():
    m = FakeMachine()
    g = m.governor(share_above=2)
    m.others, m.lower, m.barriers_hurt = 1, True, False  # a training run at nice 19: all threads stay faster
    threads = run(m, g, 20.0, work=8)  # 8 streams: one thread each, with no trial that takes the core back
    assert set(threads[int(4 * MIN_SAMPLES * SAMPLE_SECONDS / 0.025) :]) == {1} and g.drops <= 2  # at most one trial
    threads = run(m, g, 20.0, work=1)  # one stream: back to both threads once the recent steps are small
    assert threads[TRIAL_STEPS] == 2 and threads.count(1) < len(threads) / 10  # a few short trials only
    run(m, g, 1.0, work=8)
    assert g.current == 1
    m.others = 0  # the neighbour ends: the batch takes both threads again
    run(m, g, 2.0, work=8)
    assert g.current == 2
    alone = m.governor(share_above=2)  # no neighbour, but a sample in three reads one thread too many
    rng = random.Random(0)
    alone.running = lambda: int(rng.random() < 0.3)
    assert run(m, alone, 60.0, work=8).count(1) < 100  # 2400 steps: a few short trials
    m.others, m.lower = 1, False  # a neighbour of equal priority (a streaming client): trials decide
    assert run(m, m.governor(share_above=2), 20.0, work=8).count(1) < 100


def test_one_thread_that_won_its_trial_on_a_slow_start_gives_all_threads_another_try():
    m = FakeMachine()
    g = m.governor(share_above=2)
    m.others, m.barriers_hurt = 1, False  # a server started beside a training run of lower priority
    m.step(g, wall=1.0, share=0.3)  # its first step, cold and starved: one thread on trial
    run(m, g, 0.5)
    assert g.current == 1  # and one thread beat that first step
    threads = run(m, g, 30.0)
    assert threads[-400:].count(2) > 380  # all threads came back, and their trials keep them


def test_a_long_starved_step_decides_alone_and_fixed_threads_never_change():
    m = FakeMachine()
    g = m.governor()
    m.step(g, wall=2.0, share=0.4)  # a training micro-batch: the next one contended could take minutes
    assert g.current == 1 and g.drops == 1
    m.others = 1
    for _ in range(100):  # 1.2 s micro-batches on one thread beat it: no retry on all threads, ever
        m.step(g, wall=1.2)
    assert g.current == 1 and g.drops == 1
    fixed = m.governor(adaptive=False)
    m.others = 2
    for _ in range(100):
        m.step(fixed, wall=1.0, share=0.3)
    assert fixed.current == 2
    single = m.governor(threads=1)
    m.step(single, 1.0, 0.3)
    assert single.current == 1 and single.drops == 0


def test_running_threads_reads_proc_stat():
    running = running_threads()
    assert running is None or running >= 0  # other processes only: this test's own thread is left out


def test_set_priority_lowers_only():
    code = (
        "import os; from tuneloop.cpu import set_priority; "
        "print(set_priority(5), set_priority(0), os.getpriority(os.PRIO_PROCESS, 0))"
    )
    before = os.getpriority(os.PRIO_PROCESS, 0)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert [int(v) for v in out] == [before + 5] * 3
    assert set_priority(0) == before  # 0 leaves this process alone


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads /proc (Linux only)")
def test_lower_priority_running_sees_a_busy_process_of_greater_nice():
    busy = subprocess.Popen([sys.executable, "-c", "import os; os.nice(5)\nwhile True: pass"])
    try:
        deadline = time.monotonic() + 10
        while not lower_priority_running():  # the child runs (or waits for a core) at nice + 5
            assert time.monotonic() < deadline, "never seen"
            time.sleep(0.05)
    finally:
        busy.kill()
        busy.wait()


@pytest.mark.skipif(not os.path.exists("/proc/self/autogroup"), reason="no scheduler autogroups (Linux only)")
def test_a_session_leader_lowers_its_autogroup_too():
    """With autogroups, nice weighs only inside a session: a training run in a session of its own lowers
    its session's weight, or a server in another session would not go first."""
    code = (
        "import os; from tuneloop.cpu import set_priority; "
        "print(os.getsid(0) == os.getpid(), set_priority(7), "
        "(open('/proc/self/autogroup').read().split() or ['-'])[-1])"
    )  # a session in the default autogroup (a container's first session, as in CI) reads an empty file
    leader = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            start_new_session=True).stdout.split()  # fmt: skip
    nice = min(19, os.getpriority(os.PRIO_PROCESS, 0) + 7)
    assert leader == ["True", str(nice), str(nice)]
    member = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    with open("/proc/self/autogroup") as f:
        own = (f.read().split() or ["-"])[-1]
    assert member == ["False", str(nice), own]  # another's session (this one's) is left alone


def test_a_step_starved_midway_drops_between_its_layers_and_an_idle_one_never_does():
    m = FakeMachine()
    g = m.governor()
    for _ in range(3):
        m.step(g, wall=1.0)  # micro-batches of 1 s alone
    g.start()
    for _ in range(40):  # its layers, 50 ms each on a machine to itself: no drop, however many checks
        m.wall, m.cpu = m.wall + 0.05, m.cpu + 0.05 * 0.95 * 2
        g.check()
    assert g.current == 2
    g.stop()
    g.start()
    start = m.wall
    m.wall, m.cpu = m.wall + 0.6, m.cpu + 0.6 * 0.95 * 2  # the first layers alone, then a neighbour starts
    layers = 0
    while g.current == 2:
        m.wall, m.cpu = m.wall + 0.5, m.cpu + 0.5 * 0.3 * 2  # each layer now waits at its barriers
        layers += 1
        g.check()
    assert g.drops == 1 and layers == 3 and m.wall - start == pytest.approx(2.1)  # twice the usual 1 s, starved
    g.stop()
    assert g.current == 1
    idle = m.governor()
    m.wall += 100.0
    idle.check()  # outside a step (e.g. DPO's reference pass before training): nothing to judge
    idle.start()
    m.wall += 100.0
    idle.check()  # the first step: no usual time yet (the check after the step decides)
    assert idle.current == 2
