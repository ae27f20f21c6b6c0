"""Serving and training on the same cores: how much of its idle speed each side keeps.

Everything runs on one machine, in one run, on the bundled SmolLM2-135M-Instruct:

* **tuneloop serve** (``tuneloop serve --no-worker``, the real server in a child process) driven by
  closed-loop clients in this process (the official ``openai`` client, non-streamed chat
  completions, greedy ``temperature=0``, ``max_tokens`` 64, the short prompts of
  ``serve_throughput.py``, which invite answers longer than ``max_tokens``: the API has no way to
  force the length, so tokens are counted from ``usage.completion_tokens`` and the share of answers
  cut at ``max_tokens`` is printed). Two loads: **1 stream** (one request after the other) and
  **8 streams** (8 clients at once; their aggregate tokens/s).
* **tuneloop train** (``python -m tuneloop.cli.main train`` in its own process group): LoRA (r=16,
  the defaults) on the quick-start task (``tuneloop.quickstart.task.write_task``: 240 generated
  smart-home requests, repeated 8 times so that an epoch, and its checkpoint, comes only every 240
  steps), ``--batch-size 8 --lr-multiplier 1 --epochs 50`` (far more than the run lasts; the child
  is killed at the end). Its speed is read from its ``metrics.csv`` (one row per step, flushed, with
  ``elapsed_seconds``, placed on this process's clock as the rows appear): steps per second of the
  measuring window, a step crossing an edge counted in proportion to its overlap, and the first
  step of an epoch (which carries the epoch's checkpoint) left out with its time. Measuring starts
  after its warm-up steps (3; 2 with ``--quick``).
* **References**, under the same loads: Hugging Face ``transformers`` ``generate`` in a thread of this
  process (float32, greedy, exactly ``max_tokens`` new tokens per prompt, one request at a time, as
  ``serve_throughput.run_baseline`` does), and a plain PyTorch training loop in a child process
  (``AutoModelForCausalLM`` in float32 + ``peft`` LoRA r=16 / alpha 32 / dropout 0.05 on every linear
  layer, as tuneloop's defaults; AdamW 2e-4, gradient clipping 1.0; right-padded batches of 8 of
  the same examples, tokenized by tuneloop's chat renderer, loss on the assistant reply only).

Phases, one after the other, each measuring every workload that runs in it over the same window
(``--window``, 40 s; 15 s with ``--quick``). Clients run closed-loop from 2 s before the window until
it closes, and a request or ``generate`` call crossing an edge counts in proportion to its overlap;
the requests in flight are waited for before the next phase starts. With a training child in the
phase, the window opens at the end of a step and the load stays on until the step crossing its
end has ended, so that every step counted ran beside the load:

1. HF generate alone (before the server starts);
2. tuneloop 1 stream alone, tuneloop 8 streams alone (the server idles in between);
3. tuneloop train starts; after its warm-up steps: training alone;
4. training + 8 streams (both measured), training + 1 stream, training + HF generate;
5. tuneloop train is killed and the plain torch trainer starts; after its warm-up: alone, then
   beside 8 streams (both measured).

The table gives, per workload, its idle and busy figures and the kept share (busy / alone), with
the neighbour's kept share in the same window (a side that keeps its speed by starving the other
shows there); the per-phase details add the CPU (in cores) that the server, the training child and
this process (clients, HF generate) used in each window. Targets (issue 20, 2 cores): beside
training, 1 stream keeps >= 35% of its idle tokens/s and 8 streams >= 35% of their idle aggregate;
beside 8 streams, training keeps >= 25% of its idle steps/s; and neither side is more than 1.5x
worse off than its reference (tuneloop's kept share >= the reference's / 1.5: 1 stream against HF
generate beside the same training child, training against the plain loop beside the same 8
streams).

``--server-env KEY=VALUE`` and ``--train-env KEY=VALUE`` (repeatable) add environment variables to
the server and to the ``tuneloop train`` child (e.g. ``TUNELOOP_NUM_THREADS=1``,
``OMP_WAIT_POLICY=PASSIVE``), ``--server-nice`` / ``--train-nice`` lower their priority, so that
mitigations can be tried without editing this file; the references run with the defaults.

Usage (about 8 minutes at the default 40 s windows on 2 cores, 4 with ``--quick``; the converted
model is reused from ``TUNELOOP_HOME`` or ``~/.tuneloop`` when it is there)::

    python benchmarks/shared_cpu.py [--window 40] [--quick] [--max-tokens 64] \\
        [--server-env KEY=VALUE ...] [--train-env KEY=VALUE ...] [--json out.json] [--keep-home]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import serve_throughput as st  # noqa: E402  (setup, prompts and the API key of the throughput benchmark)

from tuneloop.api.process import ServerProcess  # noqa: E402

MODEL = st.MODEL
STREAMS = 8
BATCH_SIZE = 8
TRAIN_REPEATS = 8  # copies of the 240 quick-start examples: an epoch (and its checkpoint) every 240 steps
TRAIN_EPOCHS = 50  # the most `tuneloop train` accepts; the child is killed long before
REFERENCE_LR = 2e-4
RAMP_S = 2.0  # clients in flight before a serving window opens
POLL_S = 0.2  # how often metrics.csv is read
STEP_WAIT_S = 300.0  # longest wait for a training step to end
REQUEST_TIMEOUT_S = 600.0

TARGETS = {"serve_1": 0.35, "serve_8": 0.35, "train": 0.25, "vs_reference": 1.5}


# -- measurements ----------------------------------------------------------------------------------
@dataclass
class Timed:
    """One request or ``generate`` call: when it ran and the tokens it produced."""

    start: float
    end: float
    tokens: int
    full: bool  # cut at max_tokens (finish_reason "length")


@dataclass
class Rate:
    """A workload's speed over a window."""

    value: float  # tokens/s or steps/s
    unit: str
    count: float  # requests (calls) overlapping the window, or steps (fractions at the edges)
    detail: dict[str, Any] = field(default_factory=dict)


def token_rate(items: list[Timed], t0: float, t1: float) -> Rate:
    """Tokens per second in [t0, t1]; an item crossing an edge counts in proportion to its overlap."""
    tokens = 0.0
    inside = [it for it in items if min(it.end, t1) > max(it.start, t0)]
    for it in inside:
        tokens += it.tokens * (min(it.end, t1) - max(it.start, t0)) / max(it.end - it.start, 1e-9)
    full = sum(it.full for it in inside) / len(inside) if inside else math.nan
    mean_tokens = sum(it.tokens for it in inside) / len(inside) if inside else math.nan
    return Rate(tokens / (t1 - t0), "tok/s", len(inside), {"full_length_share": full, "mean_tokens": mean_tokens})


@dataclass
class StepRow:
    """One metrics.csv row, and when this process first saw it (``time.perf_counter``)."""

    step: int
    epoch: int
    elapsed: float
    seen: float


class StepFollower:
    """Reads a training child's ``metrics.csv`` as it grows (a background thread, every ``POLL_S``)."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: list[StepRow] = []
        self._pos = 0
        self._partial = b""
        self._columns: dict[str, int] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-follower", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            self.poll()

    def poll(self) -> None:
        """Read the rows written since the last call."""
        with self._lock:
            try:
                with self.path.open("rb") as f:
                    f.seek(self._pos)
                    data = f.read()
            except FileNotFoundError:
                return
            seen = time.perf_counter()
            self._pos += len(data)
            *lines, self._partial = (self._partial + data).split(b"\n")
            for line in lines:
                values = next(csv.reader([line.decode()]), None)
                if not values:
                    continue
                if self._columns is None:
                    self._columns = {name: i for i, name in enumerate(values)}
                    continue
                col = self._columns
                row = StepRow(int(values[col["step"]]), int(values[col["epoch"]]),
                              float(values[col["elapsed_seconds"]]), seen)  # fmt: skip
                self.rows.append(row)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def steps(self) -> tuple[list[tuple[float, float, bool]], float]:
        """Each step as (start, end, after an epoch end) on this process's clock, and the newest row's end.

        The child's ``elapsed_seconds`` is placed on this process's clock by the smallest lag
        between a row's elapsed time and the moment it was seen (the poll interval bounds the error).
        The first step of an epoch also carries the previous epoch's checkpoint.
        """
        self.poll()
        with self._lock:
            rows = list(self.rows)
        if not rows:
            return [], -math.inf
        offset = min(r.seen - r.elapsed for r in rows)
        steps = [(a.elapsed + offset, b.elapsed + offset, b.epoch != a.epoch) for a, b in pairwise(rows)]
        return steps, rows[-1].elapsed + offset

    def rate(self, t0: float, t1: float) -> Rate:
        """Steps/s in [t0, t1]: whole steps inside count 1, a step crossing an edge its share of the overlap.

        Steps that carry a checkpoint (the first of an epoch) are left out, with their time.
        """
        steps, last = self.steps()
        done = excluded = 0.0
        whole: list[float] = []
        for start, end, checkpoint in steps:
            overlap = min(end, t1) - max(start, t0)
            if overlap <= 0:
                continue
            if checkpoint:
                excluded += overlap
                continue
            done += overlap / max(end - start, 1e-9)
            if start >= t0 and end <= t1:
                whole.append(end - start)
        seconds = (t1 - t0) - excluded
        detail = {
            "whole_steps": len(whole),
            "s_per_step": sum(whole) / len(whole) if whole else None,
            "longest_step_s": max((end - start for start, end, _ in steps if end > t0 and start < t1), default=None),
            "window_closed_by_a_step": last >= t1,  # False: the step crossing t1 never ended (counted as nothing)
        }
        return Rate(done / seconds if seconds > 0 else math.nan, "steps/s", round(done, 2), detail)


# -- workloads -------------------------------------------------------------------------------------
class Load:
    """Closed-loop clients in threads of this process, until stopped (a context manager).

    Leaving the context waits for the requests in flight, so that no load spills into the next
    phase (unless leaving on an error or Ctrl-C).
    """

    key = ""

    def __init__(self, clients: int):
        self.items: list[Timed] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(i, clients), daemon=True) for i in range(clients)]

    def one(self, n: int) -> Timed:
        """Run request number ``n``."""
        raise NotImplementedError

    def _loop(self, index: int, clients: int) -> None:
        n = index
        try:
            while not self._stop.is_set():
                self.items.append(self.one(n))
                n += clients
        except BaseException as exc:  # reported by rate()
            self.errors.append(exc)

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(None if exc_type is None else 5)

    def rate(self, t0: float, t1: float) -> Rate:
        if self.errors:
            raise RuntimeError(f"{self.key}: a client failed: {self.errors[0]!r}") from self.errors[0]
        return token_rate(self.items, t0, t1)


class ServingLoad(Load):
    """``streams`` clients sending non-streamed chat completions to the server, one after the other each."""

    def __init__(self, server: ServerProcess, streams: int, max_tokens: int):
        super().__init__(streams)
        self.key = f"serve_{streams}"
        self.client = server.client(timeout=REQUEST_TIMEOUT_S)
        self.max_tokens = max_tokens

    def one(self, n: int) -> Timed:
        return chat_once(self.client, st.PROMPTS[n % len(st.PROMPTS)], self.max_tokens)


def chat_once(client: Any, prompt: str, max_tokens: int) -> Timed:
    start = time.perf_counter()
    response = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=max_tokens
    )
    end = time.perf_counter()
    return Timed(start, end, response.usage.completion_tokens, response.choices[0].finish_reason == "length")


class HFGenerate:
    """Hugging Face ``generate`` in this process: float32, greedy, exactly ``max_tokens`` new tokens a call."""

    def __init__(self, model_dir: Path, prompts: list[list[int]], max_tokens: int):
        import torch
        from transformers import AutoModelForCausalLM

        from tuneloop.models.loading import configure_torch_threads

        configure_torch_threads(None)
        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
        self.prompts, self.max_tokens = prompts, max_tokens
        self.generate(prompts[0], 8)  # warm-up

    def generate(self, ids: list[int], n: int) -> int:
        inputs = self.torch.tensor([ids])
        with self.torch.inference_mode():
            out = self.model.generate(
                inputs, attention_mask=self.torch.ones_like(inputs), do_sample=False, max_new_tokens=n,
                min_new_tokens=n, pad_token_id=self.model.generation_config.eos_token_id,
            )  # fmt: skip
        return out.shape[1] - inputs.shape[1]


class HFLoad(Load):
    """One client calling ``generate`` on the prompts in turn (a thread; torch releases the GIL)."""

    key = "hf_generate"

    def __init__(self, hf: HFGenerate):
        super().__init__(1)
        self.hf = hf

    def one(self, n: int) -> Timed:
        start = time.perf_counter()
        tokens = self.hf.generate(self.hf.prompts[n % len(self.hf.prompts)], self.hf.max_tokens)
        return Timed(start, time.perf_counter(), tokens, tokens == self.hf.max_tokens)


class TrainingChild:
    """A training process in its own process group, followed through its ``metrics.csv``."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], out: Path, log: Path, nice: int = 0):
        self.name = name
        out.mkdir(parents=True, exist_ok=True)
        self.log_path = log
        self._log = log.open("w")
        if nice:
            argv = ["nice", "-n", str(nice), *argv]
        self.process = subprocess.Popen(argv, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                        start_new_session=True)  # fmt: skip
        self.follower = StepFollower(out / "metrics.csv")

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited ({self.process.returncode}): {self.log_tail()}")

    def wait_warm(self, steps: int, timeout: float = 900) -> None:
        """Block until the child has written ``steps`` rows (model loading and its first, slow steps)."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            self.check_alive()
            self.follower.poll()
            if len(self.follower.rows) >= steps:
                return
            time.sleep(POLL_S)
        raise RuntimeError(f"{self.name} did not reach {steps} steps in {timeout:.0f} s: {self.log_tail()}")

    def wait_for_step_end(self, after: float, timeout: float = STEP_WAIT_S) -> float | None:
        """Block until a step ends after ``after`` (this process's clock): its end, or None after ``timeout``."""
        deadline = time.perf_counter() + timeout
        while True:
            self.check_alive()
            steps, last = self.follower.steps()
            if last > after:
                return next((end for _, end, _ in steps if end > after), last)
            if time.perf_counter() > deadline:
                print(f"  {self.name}: no step ended in {timeout:.0f} s", file=sys.stderr)
                return None
            time.sleep(POLL_S / 2)

    def rate(self, t0: float, t1: float) -> Rate:
        self.check_alive()
        return self.follower.rate(t0, t1)

    def log_tail(self, chars: int = 3000) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        """Terminate the child's whole process group (kill it if it lingers)."""
        self.follower.stop()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.process.poll() is not None:
                break
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(15)
        with contextlib.suppress(ProcessLookupError, PermissionError):  # anything left behind in its group
            os.killpg(self.process.pid, signal.SIGKILL)
        self._log.close()


# -- setup -----------------------------------------------------------------------------------------
def child_env(home: Path, extra: dict[str, str]) -> dict[str, str]:
    """This process's environment without its TUNELOOP_* settings, with ``home`` and ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNELOOP_")}
    return {**env, "TUNELOOP_HOME": str(home), "PYTHONUNBUFFERED": "1", **extra}


def write_train_file(folder: Path) -> Path:
    """The quick-start training examples, repeated ``TRAIN_REPEATS`` times."""
    from tuneloop.quickstart.task import write_task

    train, _ = write_task(folder)
    lines = train.read_text()
    path = folder / "train-repeated.jsonl"
    path.write_text(lines * TRAIN_REPEATS)
    return path


def start_tuneloop_train(home: Path, train_file: Path, env: dict[str, str], nice: int) -> TrainingChild:
    out = home / "train-tuneloop"
    argv = [sys.executable, "-m", "tuneloop.cli.main", "train", "--model", MODEL, "--train", str(train_file),
            "--out", str(out), "--epochs", str(TRAIN_EPOCHS), "--batch-size", str(BATCH_SIZE),
            "--lr-multiplier", "1", "--seed", "0"]  # fmt: skip
    return TrainingChild("tuneloop train", argv, child_env(home, env), out, home / "train-tuneloop.log", nice)


def start_reference_train(home: Path, train_file: Path) -> TrainingChild:
    out = home / "train-reference"
    argv = [sys.executable, str(Path(__file__).resolve()), "reference-train", "--home", str(home),
            "--train-file", str(train_file), "--out", str(out)]  # fmt: skip
    return TrainingChild("plain torch train", argv, child_env(home, {}), out, home / "train-reference.log")


def renice(pid: int, nice: int) -> None:
    """Lower the priority of every thread of ``pid`` (Linux nice values are per thread; new ones inherit)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.setpriority(os.PRIO_PROCESS, int(task.name), nice)


def start_server(home: Path, env: dict[str, str], nice: int) -> ServerProcess:
    server = ServerProcess(home, "--no-worker", env={"TUNELOOP_API_KEY": st.API_KEY, **env},
                           log_path=home / "serve.log", inherit_settings=False)  # fmt: skip
    if nice:
        renice(server.process.pid, nice)  # before it starts its threads
    server.wait_ready()
    if nice:
        renice(server.process.pid, nice)
    return server


def warm_up_server(server: ServerProcess, max_tokens: int) -> None:
    """Load the engine, then one request per stream at once (the batched path)."""
    client = server.client(timeout=300)
    for _ in range(2):
        chat_once(client, "Tell me about the sea.", 16)
    with ServingLoad(server, STREAMS, max_tokens) as load:
        while len(load.items) < STREAMS and not load.errors:
            time.sleep(0.1)
    load.rate(0.0, 1.0)  # raises if a client failed


def cpu_info() -> dict[str, Any]:
    """CPU model, the SIMD flags that matter here, and core counts."""
    model, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    wanted = ("avx2", "avx512f", "avx512_vnni", "amx_tile")
    return {"model": model, "flags": {f: f in flags for f in wanted}, "cpus": os.cpu_count(), "usable_cores": cores}


# -- phases ----------------------------------------------------------------------------------------
@dataclass
class Phase:
    """What ran together in one window, each workload's rate, and the cores each process used."""

    name: str
    window: tuple[float, float]
    rates: dict[str, Rate]
    cores: dict[str, float] = field(default_factory=dict)
    #: the server's steps in the window: all, those on one thread of several, and drops to one thread
    server_steps: dict[str, int] = field(default_factory=dict)


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of a process, all its threads (None: this process; None when it is gone)."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_snapshot(pids: dict[str, int | None]) -> dict[str, float | None]:
    return {name: cpu_seconds(pid) for name, pid in pids.items()}


def server_steps(server: ServerProcess) -> dict[str, int]:
    """The server's engine counters from ``/health``: steps, steps on one thread, drops to one thread."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/health", timeout=10) as response:
        engines = json.load(response)["engines"]
    keys = {"steps": "decode_steps", "on one thread": "shared_cpu_steps", "drops": "shared_cpu_drops"}
    return {k: sum(e[v] for e in engines.values()) for k, v in keys.items()}


class Bench:
    """Runs the phases: the workloads of a phase run together, and each is measured over the same window."""

    def __init__(self, window: float):
        self.window = window
        self.phases: list[Phase] = []
        self.pids: dict[str, int | None] = {"bench": None}  # processes whose CPU use each phase reports
        self.server: ServerProcess | None = None  # whose engine counters each phase reports

    def phase(self, name: str, load: Load | None = None, trainer: TrainingChild | None = None,
              trainer_key: str = "") -> Phase:  # fmt: skip
        """Start ``load`` (if any); open the window at a step boundary of ``trainer`` (if any), else after a
        ramp; close it ``window`` seconds later, keeping the load on until the trainer's step crossing the
        end has ended too (so that every step counted ran beside the load)."""
        print(f"phase: {name} ({self.window:.0f} s)", file=sys.stderr, flush=True)
        with load if load is not None else contextlib.nullcontext():
            if load is not None:
                time.sleep(RAMP_S)
            t0 = time.perf_counter()
            if trainer is not None:
                t0 = trainer.wait_for_step_end(t0) or time.perf_counter()
            t1 = t0 + self.window
            cpu0, c0 = cpu_snapshot(self.pids), time.perf_counter()
            steps0 = server_steps(self.server) if self.server else {}
            time.sleep(max(0.0, t1 - time.perf_counter()))
            cpu1, c1 = cpu_snapshot(self.pids), time.perf_counter()
            steps = {k: v - steps0[k] for k, v in server_steps(self.server).items()} if self.server else {}
            if trainer is not None:
                trainer.wait_for_step_end(t1)
            if load is not None:
                print("  window closed; waiting for the requests in flight", file=sys.stderr, flush=True)
        rates: dict[str, Rate] = {}
        if load is not None:
            rates[load.key] = load.rate(t0, t1)
        if trainer is not None:
            rates[trainer_key] = trainer.rate(t0, t1)
        shown = ", ".join(f"{k} {r.value:.2f} {r.unit} (n={r.count:g})" for k, r in rates.items())
        print(f"  {shown}", file=sys.stderr, flush=True)
        cores = {k: (cpu1[k] - v) / (c1 - c0) for k, v in cpu0.items() if v is not None and cpu1[k] is not None}
        result = Phase(name, (t0, t1), rates, cores, steps)
        self.phases.append(result)
        return result


@dataclass
class Row:
    """One line of the table."""

    workload: str
    unit: str
    alone: float
    busy: float
    beside: str
    neighbour_kept: float  # the neighbour's rate in the busy window over its own idle rate

    @property
    def kept(self) -> float:
        return self.busy / self.alone if self.alone else math.nan


def run_phases(args: argparse.Namespace, home: Path, cleanup: list[Any]) -> tuple[list[Row], Bench]:
    """Set up, run every phase, and turn them into the table's rows."""
    from tuneloop.config import Settings
    from tuneloop.data.render import ChatRenderer
    from tuneloop.models import Catalog
    from tuneloop.models.loading import load_tokenizer

    t_setup = time.perf_counter()
    model_dir = st.prepare_home(home)
    train_file = write_train_file(home / "data")
    tokenizer = load_tokenizer(Catalog(Settings(home=home, database_url=None)).get(MODEL))
    renderer = ChatRenderer(tokenizer)
    prompt_ids = [renderer.render_prompt([{"role": "user", "content": p}]) for p in st.PROMPTS]
    bench = Bench(args.window)
    warm = args.warmup_steps or (2 if args.quick else 3)

    hf = HFGenerate(model_dir, prompt_ids, args.max_tokens)
    print(f"setup: {time.perf_counter() - t_setup:.0f} s", file=sys.stderr)
    hf_alone = bench.phase("HF generate alone", HFLoad(hf))

    server = start_server(home, args.server_env, args.server_nice)
    cleanup.append(server.stop)
    bench.pids["server"] = server.process.pid
    bench.server = server
    warm_up_server(server, args.max_tokens)
    s1_alone = bench.phase("tuneloop 1 stream alone", ServingLoad(server, 1, args.max_tokens))
    s8_alone = bench.phase(f"tuneloop {STREAMS} streams alone", ServingLoad(server, STREAMS, args.max_tokens))

    train = start_tuneloop_train(home, train_file, args.train_env, args.train_nice)
    cleanup.append(train.stop)
    bench.pids["train"] = train.process.pid
    train.wait_warm(warm)
    t_alone = bench.phase("tuneloop train alone", trainer=train, trainer_key="train")
    t_s8 = bench.phase(f"tuneloop train + {STREAMS} streams", ServingLoad(server, STREAMS, args.max_tokens),
                       trainer=train, trainer_key="train")  # fmt: skip
    t_s1 = bench.phase("tuneloop train + 1 stream", ServingLoad(server, 1, args.max_tokens),
                       trainer=train, trainer_key="train")  # fmt: skip
    t_hf = bench.phase("tuneloop train + HF generate", HFLoad(hf), trainer=train, trainer_key="train")
    train.stop()
    del bench.pids["train"], hf

    ref = start_reference_train(home, train_file)
    cleanup.append(ref.stop)
    bench.pids["reference"] = ref.process.pid
    ref.wait_warm(warm)
    r_alone = bench.phase("plain torch train alone", trainer=ref, trainer_key="reference")
    r_s8 = bench.phase(f"plain torch train + {STREAMS} streams", ServingLoad(server, STREAMS, args.max_tokens),
                       trainer=ref, trainer_key="reference")  # fmt: skip
    ref.stop()

    s8_key = f"serve_{STREAMS}"
    train_idle, s8_idle = t_alone.rates["train"].value, s8_alone.rates[s8_key].value
    beside_train, beside_s8 = "tuneloop train", f"tuneloop serve, {STREAMS} streams"
    rows = [
        Row("tuneloop serve, 1 stream", "tok/s", s1_alone.rates["serve_1"].value, t_s1.rates["serve_1"].value,
            beside_train, t_s1.rates["train"].value / train_idle),
        Row(f"tuneloop serve, {STREAMS} streams", "tok/s", s8_idle, t_s8.rates[s8_key].value,
            beside_train, t_s8.rates["train"].value / train_idle),
        Row(f"tuneloop train (LoRA, batch {BATCH_SIZE})", "steps/s", train_idle, t_s8.rates["train"].value,
            beside_s8, t_s8.rates[s8_key].value / s8_idle),
        Row("HF generate, 1 stream", "tok/s", hf_alone.rates["hf_generate"].value, t_hf.rates["hf_generate"].value,
            beside_train, t_hf.rates["train"].value / train_idle),
        Row(f"plain torch train (LoRA, batch {BATCH_SIZE})", "steps/s", r_alone.rates["reference"].value,
            r_s8.rates["reference"].value, beside_s8, r_s8.rates[s8_key].value / s8_idle),
    ]  # fmt: skip
    return rows, bench


# -- report ----------------------------------------------------------------------------------------
def pct(x: float) -> str:
    return "-" if math.isnan(x) else f"{x * 100:.0f}%"


def print_table(rows: list[Row]) -> None:
    header = f"{'workload':<34} {'unit':<7} {'alone':>8} {'busy':>8} {'kept':>6}  {'beside':<28} {'its kept':>8}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r.workload:<34} {r.unit:<7} {r.alone:>8.2f} {r.busy:>8.2f} {pct(r.kept):>6}  "
              f"{r.beside:<28} {pct(r.neighbour_kept):>8}")  # fmt: skip


def comparisons(rows: list[Row]) -> list[dict[str, Any]]:
    """tuneloop's kept share over its reference's, beside the same neighbour."""
    s1, s8, train, hf, ref = rows
    pairs = [
        ("serving, 1 stream vs HF generate (beside tuneloop train)", s1, hf),
        ("training vs plain torch training (beside 8 streams)", train, ref),
        ("serving, 8 streams vs HF generate 1 stream (no target)", s8, hf),
    ]
    out = []
    for name, ours, theirs in pairs:
        ratio = ours.kept / theirs.kept if theirs.kept else math.nan
        print(f"  {name}: {pct(ours.kept)} / {pct(theirs.kept)} = {ratio:.2f}")
        out.append({"comparison": name, "tuneloop_kept": ours.kept, "reference_kept": theirs.kept, "ratio": ratio})
    return out


def check_targets(rows: list[Row]) -> list[dict[str, Any]]:
    s1, s8, train, hf, ref = rows
    f = TARGETS["vs_reference"]
    checks = [
        (f"1 stream beside training keeps >= {TARGETS['serve_1']:.0%} of idle tok/s", s1.kept, TARGETS["serve_1"]),
        (f"{STREAMS} streams beside training keep >= {TARGETS['serve_8']:.0%} of idle tok/s", s8.kept,
         TARGETS["serve_8"]),
        (f"training beside {STREAMS} streams keeps >= {TARGETS['train']:.0%} of idle steps/s", train.kept,
         TARGETS["train"]),
        (f"serving (1 stream) kept >= HF generate's kept / {f}", s1.kept, hf.kept / f),
        (f"training kept >= plain torch training's kept / {f}", train.kept, ref.kept / f),
    ]  # fmt: skip
    out = []
    for name, value, threshold in checks:
        ok = value >= threshold  # False for NaN
        print(f"  [{'PASS' if ok else 'FAIL'}] {name}: {pct(value)} (needs {pct(threshold)})")
        out.append({"target": name, "value": value, "threshold": threshold, "pass": ok})
    return out


def print_details(bench: Bench) -> None:
    """Each phase's raw figures (requests, answers cut at max_tokens, seconds per step, cores per process)."""
    for p in bench.phases:
        parts = []
        for key, r in p.rates.items():
            if r.unit == "tok/s":
                full = pct(r.detail["full_length_share"])
                extra = f"{r.count:g} calls, {r.detail['mean_tokens']:.0f} tokens each, {full} cut at max_tokens"
            else:
                per_step = r.detail.get("s_per_step")
                extra = f"{r.count:g} steps, " + (f"{per_step:.2f} s/step" if per_step else "no whole step")
                if not r.detail.get("window_closed_by_a_step", True):
                    extra += ", the last step never ended"
            parts.append(f"{key} {r.value:.2f} {r.unit} ({extra})")
        cores = ", ".join(f"{k} {v:.2f}" for k, v in p.cores.items())
        print(f"  {p.name} [{p.window[1] - p.window[0]:.1f} s]: {'; '.join(parts)}")
        print(f"      cores used: {cores}")
        if p.server_steps.get("steps"):  # steps on one thread include those that only ran prompt pieces
            print(f"      server: {p.server_steps['steps']} decode steps; {p.server_steps['on one thread']} "
                  f"steps on one thread, {p.server_steps['drops']} drops to one thread")  # fmt: skip


# -- the plain torch trainer (a child process) -----------------------------------------------------
def reference_train(argv: list[str]) -> None:
    """``shared_cpu.py reference-train``: a plain PyTorch LoRA loop writing step, epoch and elapsed_seconds."""
    parser = argparse.ArgumentParser(prog="shared_cpu.py reference-train")
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--train-file", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tuneloop.config import Settings
    from tuneloop.data.render import ChatRenderer
    from tuneloop.models import Catalog
    from tuneloop.models.loading import configure_torch_threads, load_tokenizer

    configure_torch_threads(None)
    torch.manual_seed(args.seed)
    entry = Catalog(Settings(home=args.home, database_url=None)).get(MODEL)
    tokenizer = load_tokenizer(entry)
    renderer = ChatRenderer(tokenizer)
    with args.train_file.open() as f:
        examples = [renderer.render(json.loads(line)["messages"]) for line in f if line.strip()]
    model = AutoModelForCausalLM.from_pretrained(str(entry.path), dtype=torch.float32)
    config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=REFERENCE_LR)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    steps_per_epoch = len(examples) // args.batch_size

    args.out.mkdir(parents=True, exist_ok=True)
    metrics = (args.out / "metrics.csv").open("w", newline="")
    writer = csv.writer(metrics)
    writer.writerow(["step", "epoch", "train_loss", "elapsed_seconds"])
    metrics.flush()
    generator = torch.Generator().manual_seed(args.seed)
    started, step, epoch = time.perf_counter(), 0, 0
    while True:  # until killed
        epoch += 1
        order = torch.randperm(len(examples), generator=generator).tolist()
        for b in range(steps_per_epoch):
            batch = [examples[i] for i in order[b * args.batch_size : (b + 1) * args.batch_size]]
            width = max(len(e.input_ids) for e in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            labels = torch.full((len(batch), width), -100, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for i, e in enumerate(batch):
                n = len(e.input_ids)
                ids[i, :n] = torch.tensor(e.input_ids)
                mask[i, :n] = 1
                labels[i, :n] = torch.tensor([t if m else -100 for t, m in zip(e.input_ids, e.mask, strict=True)])
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            writer.writerow([step, epoch, f"{loss.item():.4f}", f"{time.perf_counter() - started:.4f}"])
            metrics.flush()


# -- main ------------------------------------------------------------------------------------------
def parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"expected KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


def main() -> None:
    if sys.argv[1:2] == ["reference-train"]:
        reference_train(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--window", type=float, help="Seconds measured per phase (default 40; 15 with --quick).")
    parser.add_argument("--quick", action="store_true", help="15 s windows and 2 warm-up training steps.")
    parser.add_argument("--max-tokens", type=int, default=64, help="Completion tokens per request / generate call.")
    parser.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                        help="Extra environment for the server (repeatable).")  # fmt: skip
    parser.add_argument("--train-env", action="append", default=[], metavar="KEY=VALUE",
                        help="Extra environment for the tuneloop train child (repeatable).")  # fmt: skip
    parser.add_argument("--server-nice", type=int, default=0, help="Niceness added to the server's threads.")
    parser.add_argument("--train-nice", type=int, default=0, help="Niceness of the tuneloop train child.")
    parser.add_argument("--warmup-steps", type=int, help="Training steps before measuring (default 3; 2 with --quick).")
    parser.add_argument("--json", type=Path, help="Also write every figure to this file.")
    parser.add_argument("--keep-home", action="store_true", help="Keep the temporary TUNELOOP_HOME (and its logs).")
    args = parser.parse_args()
    args.window = args.window or (15.0 if args.quick else 40.0)
    args.server_env, args.train_env = parse_env(args.server_env), parse_env(args.train_env)

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-up below on `kill`, too
    load_before = os.getloadavg()
    home = Path(tempfile.mkdtemp(prefix="tuneloop-shared-cpu-"))
    cleanup: list[Any] = []
    t_start = time.perf_counter()
    try:
        rows, bench = run_phases(args, home, cleanup)
    finally:
        for stop in reversed(cleanup):
            try:
                stop()
            except Exception as exc:  # keep cleaning up
                print(f"clean-up: {exc!r}", file=sys.stderr)
        if args.keep_home:
            print(f"home kept at {home}", file=sys.stderr)
        else:
            shutil.rmtree(home, ignore_errors=True)
    load_after = os.getloadavg()

    cpu = cpu_info()
    flags = ", ".join(f"{name} {'yes' if has else 'no'}" for name, has in cpu["flags"].items())
    print()
    print(f"Shared CPU: {MODEL}, max_tokens={args.max_tokens}, greedy, window {args.window:.0f} s per phase, "
          f"total {time.perf_counter() - t_start:.0f} s")  # fmt: skip
    print(f"CPU: {cpu['model']}, {cpu['usable_cores']} usable cores of {cpu['cpus']}; {flags}")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min), {load_after[2]:.2f} (15 min)")
    if args.server_env or args.train_env or args.server_nice or args.train_nice:
        print(f"server env {args.server_env}, nice {args.server_nice}; "
              f"train env {args.train_env}, nice {args.train_nice}")  # fmt: skip
    print()
    print_table(rows)
    print()
    print("Phases:")
    print_details(bench)
    print()
    print("tuneloop kept / reference kept:")
    compared = comparisons(rows)
    print()
    print("Targets:")
    targets = check_targets(rows)
    if args.json:
        payload = {
            "model": MODEL, "max_tokens": args.max_tokens, "window_s": args.window, "quick": args.quick,
            "streams": STREAMS, "batch_size": BATCH_SIZE, "cpu": cpu, "load_before": load_before,
            "load_after": load_after, "server_env": args.server_env, "train_env": args.train_env,
            "server_nice": args.server_nice, "train_nice": args.train_nice,
            "rows": [{**asdict(r), "kept": r.kept} for r in rows],
            "phases": [{"name": p.name, "window_s": p.window[1] - p.window[0], "cores": p.cores,
                        "server_steps": p.server_steps, "rates": {k: asdict(r) for k, r in p.rates.items()}}
                       for p in bench.phases],
            "comparisons": compared, "targets": targets,
        }  # fmt: skip
        args.json.write_text(json.dumps(payload, indent=2, default=str))


if __name__ == "__main__":
    main()
