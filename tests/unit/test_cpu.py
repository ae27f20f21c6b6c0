"""Sharing the CPU: the thread governor's decisions (fake clocks), and training's OS priority."""

import os
import subprocess
import sys

from tuneloop.cpu import MIN_SAMPLES, ThreadGovernor, running_threads, set_priority


class FakeMachine:
    """A clock whose steps take ``wall`` seconds and ``cpu`` process CPU seconds, and a running-threads count."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0
        self.others = 0  # threads of other processes running
        self.applied: list[int] = []

    def clock(self) -> tuple[float, float]:
        return self.wall, self.cpu

    def governor(self, threads: int = 2, adaptive: bool = True) -> ThreadGovernor:
        g = ThreadGovernor(threads, self.applied.append, adaptive, clock=self.clock, running=lambda: None, cores=2)
        g.running = lambda: g.current + self.others
        return g

    def step(self, g: ThreadGovernor, wall: float = 0.02, share: float = 0.95) -> None:
        """One step in which each of the governor's threads ran ``share`` of the time."""
        g.start()
        self.wall += wall
        self.cpu += wall * share * g.current
        g.stop()


def test_full_threads_while_no_one_else_runs():
    m = FakeMachine()
    g = m.governor()
    for _ in range(200):
        m.step(g)
    assert g.current == 2 and not g.shared and g.drops == 0 and m.applied == [2]


def test_drops_to_one_thread_beside_others_and_comes_back_when_they_leave():
    m = FakeMachine()
    g = m.governor()
    m.others = 1  # another process's thread wants a core
    for _ in range(MIN_SAMPLES - 1):
        m.step(g)
    assert g.current == 2  # a few samples decide, not one
    m.step(g)
    assert g.current == 1 and g.shared and g.drops == 1
    for _ in range(200):  # 4 s: the neighbour keeps running, so one thread each
        m.step(g)
    assert g.current == 1
    m.others = 0
    for _ in range(MIN_SAMPLES):  # the samples taken beside the neighbour still count
        m.step(g)
    assert g.current == 1
    for _ in range(2 * MIN_SAMPLES):
        m.step(g)
    assert g.current == 2 and m.applied == [2, 1, 2]


def test_a_long_starved_step_decides_alone_and_fixed_threads_never_change():
    m = FakeMachine()
    g = m.governor()
    m.step(g, wall=2.0, share=0.4)  # a training micro-batch: the next one contended could take minutes
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
    assert running is None or running >= 1  # this test's own thread runs


def test_set_priority_lowers_only():
    code = (
        "import os; from tuneloop.cpu import set_priority; "
        "print(set_priority(5), set_priority(0), os.getpriority(os.PRIO_PROCESS, 0))"
    )
    before = os.getpriority(os.PRIO_PROCESS, 0)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert [int(v) for v in out] == [before + 5] * 3
    assert set_priority(0) == before  # 0 leaves this process alone
