"""Serving throughput: tuneloop's continuous-batching multi-LoRA server vs Hugging Face ``generate``.

Starts the real ``tuneloop serve`` on the bundled SmolLM2-135M-Instruct with 4 random LoRA
adapters (r=16, alpha=32, every linear layer) registered as fine-tuned models, and drives it with
concurrent streaming clients (the official ``openai`` client, ``stream=True``, greedy decoding, a
fixed ``max_tokens``, varied short prompts). For each scenario it reports:

* aggregate output tokens/s: the completion tokens of every request (``usage.completion_tokens``)
  over the wall time from the first request sent to the last one finished;
* time to first token (TTFT, p50/p95): from sending a request to its first content chunk;
* inter-token latency (ITL): the mean gap between consecutive content chunks of a request;
* the mean decode batch (from the engine's ``decode_steps`` in ``GET /health``);
* where the wall time went: the shares the engine spent in decode steps and in prefills (its
  ``decode_seconds`` / ``prefill_seconds``), and the CPU this benchmark's own clients used (in
  cores: they run on the same machine, so 16 streams' chunk parsing competes with the server).

Next to it, in the same run and before the server starts (so the two never compete for the
cores), the naive baseline: the same model in float32 with ``transformers``, one request at a time,
``model.generate(do_sample=False, min_new_tokens=N, max_new_tokens=N)`` on the same prompts.

Adapter memory is measured twice: each adapter's tensors as the server loads them
(``tuneloop.engine.lora_weights.load_lora``) over the base model's parameter bytes, and the
server's resident-set growth (``VmRSS``) on the first request to each adapter.

The scenarios run in interleaved rounds (3; 1 with ``--quick``): every round runs each scenario
once, and a scenario's figures pool its rounds. On a shared machine whose speed drifts by 10-15%
within minutes, this way every scenario samples the same stretches of time, and ratios between
scenarios (the targets) do not depend on which one happened to run during a slow minute; the
per-round ratios are printed too.

Targets (2 CPU cores): single stream (base model) >= 3x the baseline's tokens/s; 16 concurrent
streams >= 5x the single-stream aggregate (same model mix); 16 streams mixing 4 adapters >= 0.8x
16 streams on one adapter; each loaded adapter < 5% of the base model's memory.

Usage (about 5 minutes on a 2-core laptop; the converted model is reused from ``TUNELOOP_HOME``
or ``~/.tuneloop`` when it is there)::

    python benchmarks/serve_throughput.py [--max-tokens 64] [--quick] [--json results.json] \\
        [--server-env KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.api.process import ServerProcess

MODEL = "smollm2-135m-instruct"
N_ADAPTERS = 4
ADAPTERS = [f"ft:{MODEL}:local:bench{i}:ftjob-bench{i}" for i in range(N_ADAPTERS)]
LORA_RANK, LORA_ALPHA, LORA_B_STD = 16, 32, 0.04
API_KEY = "bench"

#: Short user questions that invite answers longer than ``max_tokens`` (requests cycle through them).
PROMPTS = [
    "Explain how a bicycle gear system works.",
    "Write a short story about a lighthouse keeper.",
    "Describe the water cycle for a ten-year-old.",
    "What are the benefits of regular exercise?",
    "Explain why the sky is blue.",
    "Give some tips for learning a new language.",
    "Describe a typical day in ancient Rome.",
    "How do airplanes stay in the air?",
    "Write a letter to a friend about your holiday.",
    "Explain how vaccines train the immune system.",
    "What makes a good cup of coffee?",
    "Describe how a computer stores information.",
    "Tell me about the history of the printing press.",
    "How do bees make honey?",
    "Explain the rules of chess to a beginner.",
    "What should I pack for a week of hiking?",
]


# -- setup -----------------------------------------------------------------------------------------
def prepare_home(home: Path) -> Path:
    """Make ``home`` a tuneloop home whose bundled model is ready; return the model folder.

    The caller's converted model (``$TUNELOOP_HOME`` or ``~/.tuneloop``) is symlinked in when it
    exists, so the 45 s GGUF conversion runs only on a machine that never did it.
    """
    from tuneloop.config import Settings
    from tuneloop.models import Catalog

    source = Settings().models_dir / MODEL
    (home / "models").mkdir(parents=True, exist_ok=True)
    if (source / "config.json").is_file():
        (home / "models" / MODEL).symlink_to(source.resolve(), target_is_directory=True)
    catalog = Catalog(Settings(home=home, database_url=None))
    entry = catalog.ensure_ready(catalog.get(MODEL))
    assert entry.path is not None
    return entry.path


def make_adapters(model_dir: Path, out: Path, count: int) -> list[Path]:
    """Save ``count`` PEFT LoRA adapters (every linear layer) with small random B, so outputs differ."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folders = []
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    for i in range(count):
        torch.manual_seed(1000 + i)
        config = LoraConfig(r=LORA_RANK, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules="all-linear")
        model = get_peft_model(base, config)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0.0, LORA_B_STD)
        folder = out / f"adapter-{i}"
        model.save_pretrained(str(folder))
        folders.append(folder)
        base = model.unload()  # the plain base model again, for the next adapter
    return folders


def register_adapters(home: Path, folders: list[Path]) -> None:
    """Register the adapters as fine-tuned models of the bundled model in ``home``'s job store."""
    from tuneloop.config import Settings
    from tuneloop.store.db import make_engine
    from tuneloop.store.jobs import JobStore

    jobs = JobStore(make_engine(Settings(home=home, database_url=None)))
    for model_id, folder in zip(ADAPTERS, folders, strict=True):
        jobs.add_model(model_id, MODEL, "ftjob-bench", "lora", str(folder))


def adapter_memory(model_dir: Path, folders: list[Path], activations: str) -> dict[str, Any]:
    """Base parameter bytes and each adapter's bytes as the server holds them."""
    import torch
    from transformers import AutoModelForCausalLM

    from tuneloop.engine.lora_weights import load_lora
    from tuneloop.engine.packed_weights import int8_activations

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    base_bytes = sum(p.numel() * p.element_size() for p in model.parameters())  # tied weights once
    del model
    half = int8_activations(activations)  # as the server holds them: float16 factors with int8 activations
    adapters = [load_lora(name, folder, half=half).nbytes for name, folder in zip(ADAPTERS, folders, strict=True)]
    return {"base_bytes": base_bytes, "adapter_bytes": adapters, "ratios": [b / base_bytes for b in adapters]}


# -- the naive baseline ----------------------------------------------------------------------------
def run_baseline(model_dir: Path, prompts: list[list[int]], max_tokens: int, threads: int | None) -> dict[str, Any]:
    """Hugging Face ``generate``, one request at a time, greedy, exactly ``max_tokens`` new tokens each."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.generation.streamers import BaseStreamer

    from tuneloop.models.loading import configure_torch_threads

    class Clock(BaseStreamer):
        """Records when each new token is produced (``put`` is first called with the prompt)."""

        def __init__(self) -> None:
            self.times: list[float] = []
            self.prompt_seen = False

        def put(self, value: torch.Tensor) -> None:
            if self.prompt_seen:
                self.times.append(time.perf_counter())
            self.prompt_seen = True

        def end(self) -> None:
            pass

    configure_torch_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()

    def generate(ids: list[int], n: int, streamer: BaseStreamer | None = None) -> int:
        inputs = torch.tensor([ids])
        with torch.inference_mode():
            out = model.generate(
                inputs, attention_mask=torch.ones_like(inputs), do_sample=False, max_new_tokens=n,
                min_new_tokens=n, pad_token_id=model.generation_config.eos_token_id, streamer=streamer,
            )  # fmt: skip
        return out.shape[1] - inputs.shape[1]

    generate(prompts[0], 8)  # warm-up
    results = []
    for ids in prompts:
        clock = Clock()
        start = time.perf_counter()
        tokens = generate(ids, max_tokens, clock)
        end = time.perf_counter()
        gaps = [b - a for a, b in zip(clock.times, clock.times[1:], strict=False)]
        results.append(RequestResult(MODEL, start, end, clock.times[0] - start, gaps, tokens))
    wall = max(r.end for r in results) - min(r.start for r in results)
    return asdict(summarize("HF generate, 1 at a time", 1, [Round(results, wall, 0, None)]))


# -- measuring the server --------------------------------------------------------------------------
@dataclass
class RequestResult:
    """What one request measured."""

    model: str
    start: float
    end: float
    ttft: float  # seconds to the first content chunk
    gaps: list[float]  # seconds between consecutive content chunks
    tokens: int  # completion tokens


@dataclass
class Round:
    """One run of a scenario: its requests, wall time, decode steps and engine/client seconds."""

    results: list[RequestResult]
    wall: float
    decode_steps: int
    work: dict[str, float] | None  # engine decode/prefill seconds and client CPU seconds (None: no server)


@dataclass
class Scenario:
    """One line of the table."""

    name: str
    concurrency: int
    requests: int
    wall_s: float
    tokens: int
    tok_s: float
    ttft_p50_ms: float
    ttft_p95_ms: float
    itl_mean_ms: float
    itl_p95_ms: float
    mean_batch: float | None
    models: list[str] = field(default_factory=list)
    decode_share: float | None = None  # of the wall time, in the engine's decode steps
    prefill_share: float | None = None  # of the wall time, in prefills
    client_cpu: float | None = None  # cores used by this process's clients
    round_tok_s: list[float] = field(default_factory=list)  # each round's tokens/s


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (``q`` in 0..100) of a non-empty list."""
    xs = sorted(values)
    k = (len(xs) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summarize(name: str, concurrency: int, rounds: list[Round]) -> Scenario:
    """Pool a scenario's rounds: tokens over the summed wall time, latencies over every request."""
    results = [r for rnd in rounds for r in rnd.results]
    wall = sum(rnd.wall for rnd in rounds)
    tokens = sum(r.tokens for r in results)
    ttfts = [r.ttft * 1000 for r in results]
    gaps = [g * 1000 for r in results for g in r.gaps]
    steps = sum(rnd.decode_steps for rnd in rounds)
    work = None
    if all(rnd.work is not None for rnd in rounds):
        work = {key: sum(rnd.work[key] for rnd in rounds) / wall for key in ("decode_s", "prefill_s", "client_cpu_s")}
    # every request's first token comes from its prefill; the rest from batched decode steps
    batch = (tokens - len(results)) / steps if steps else None
    return Scenario(
        name=name, concurrency=concurrency, requests=len(results), wall_s=wall, tokens=tokens, tok_s=tokens / wall,
        ttft_p50_ms=percentile(ttfts, 50), ttft_p95_ms=percentile(ttfts, 95),
        itl_mean_ms=statistics.fmean(gaps) if gaps else float("nan"),
        itl_p95_ms=percentile(gaps, 95) if gaps else float("nan"), mean_batch=batch,
        models=sorted({r.model for r in results}),
        decode_share=work and work["decode_s"], prefill_share=work and work["prefill_s"],
        client_cpu=work and work["client_cpu_s"],
        round_tok_s=[sum(r.tokens for r in rnd.results) / rnd.wall for rnd in rounds] if work else [],
    )  # fmt: skip


class Server(ServerProcess):
    """``tuneloop serve --no-worker`` in a subprocess on a free loopback port."""

    def __init__(
        self, home: Path, max_batch: int, threads: int | None, activations: str = "auto", extra: dict | None = None
    ):
        env = {"TUNELOOP_MAX_BATCH": str(max_batch), "TUNELOOP_API_KEY": API_KEY,
               "TUNELOOP_SERVE_ACTIVATIONS": activations}  # fmt: skip
        if threads:
            env["TUNELOOP_NUM_THREADS"] = str(threads)
        env.update(extra or {})
        super().__init__(home, "--no-worker", env=env, log_path=home / "serve.log", inherit_settings=False)

    def counters(self) -> dict[str, float]:
        """Decode steps and seconds spent decoding and prefilling, summed over the server's engines."""
        engines = self.health()["engines"].values()
        keys = ("decode_steps", "decode_seconds", "prefill_seconds")
        return {key: sum(e.get(key, 0) for e in engines) for key in keys}

    def rss_bytes(self) -> int:
        """The server's resident set size (VmRSS)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def client(self):
        return super().client(timeout=600)


def stream_one(client, model: str, prompt: str, max_tokens: int) -> RequestResult:
    """One streaming chat completion, timed chunk by chunk."""
    times: list[float] = []
    tokens = 0
    start = time.perf_counter()
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=max_tokens,
        stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            times.append(time.perf_counter())
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    end = time.perf_counter()
    if not times:
        raise RuntimeError(f"{model}: no content streamed")
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    return RequestResult(model, start, end, times[0] - start, gaps, tokens)


def run_round(server: Server, models: list[str], concurrency: int, n_requests: int, max_tokens: int) -> Round:
    """``n_requests`` requests (models round-robin, prompts cycled) from ``concurrency`` closed-loop clients."""
    client = server.client()
    jobs = [(models[i % len(models)], PROMPTS[i % len(PROMPTS)]) for i in range(n_requests)]
    before, cpu = server.counters(), time.process_time()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda job: stream_one(client, job[0], job[1], max_tokens), jobs))
    cpu, after = time.process_time() - cpu, server.counters()
    work = {"decode_s": after["decode_seconds"] - before["decode_seconds"], "client_cpu_s": cpu,
            "prefill_s": after["prefill_seconds"] - before["prefill_seconds"]}  # fmt: skip
    wall = max(r.end for r in results) - min(r.start for r in results)
    return Round(results, wall, int(after["decode_steps"] - before["decode_steps"]), work)


def run_scenarios(server: Server, rounds: int, quick: bool, max_tokens: int) -> list[Scenario]:
    """Every scenario once per round, round after round; each scenario's rounds pooled."""
    plan = scenario_plan()
    runs: list[list[Round]] = [[] for _ in plan]
    for i in range(rounds):
        for (name, models, concurrency), done in zip(plan, runs, strict=True):
            # 2 requests per client a round (4 for one stream), each model at least once
            n = max(2, concurrency) if quick else max(4, 2 * concurrency)
            if concurrency == 1 and len(models) > 1:
                n = max(n, len(models))
            done.append(run_round(server, models, concurrency, n, max_tokens))
            tok_s = sum(r.tokens for r in done[-1].results) / done[-1].wall
            print(f"  round {i + 1}, {name}: {tok_s:.1f} tok/s", file=sys.stderr)
    return [summarize(name, concurrency, done) for (name, _, concurrency), done in zip(plan, runs, strict=True)]


def warm_up(server: Server) -> dict[str, Any]:
    """Load the engine and every adapter (one short request each), measuring RSS growth per adapter."""
    client = server.client()
    probe = "Tell me about the sea."
    outputs = {}
    for _ in range(2):  # the first loads the engine; the second touches what a request touches
        outputs[MODEL] = stream_text(client, MODEL, probe)
    growth = []
    for model in ADAPTERS:
        before = server.rss_bytes()
        outputs[model] = stream_text(client, model, probe)
        growth.append(server.rss_bytes() - before)
    for model in ADAPTERS:  # once more, so every adapter's code path is warm
        stream_text(client, model, probe)
    return {"rss_growth_bytes": growth, "distinct_outputs": len(set(outputs.values())), "outputs": outputs}


def stream_text(client, model: str, prompt: str, max_tokens: int = 16) -> str:
    response = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=max_tokens
    )
    return response.choices[0].message.content


# -- report ----------------------------------------------------------------------------------------
def print_table(baseline: dict[str, Any], scenarios: list[Scenario]) -> None:
    header = (
        f"{'scenario':<32} {'requests':>8} {'conc':>4} {'tok/s':>7} {'TTFT p50':>9} {'TTFT p95':>9} "
        f"{'ITL mean':>9} {'batch':>5} {'vs HF':>6} {'decode':>6} {'prefill':>7} {'client':>6}"
    )
    print(header)
    print("-" * len(header))
    base = baseline["tok_s"]
    rows = [Scenario(**baseline), *scenarios]
    for s in rows:
        batch = f"{s.mean_batch:.1f}" if s.mean_batch else "-"
        shares = "".join(
            f" {f'{v * 100:.0f}%' if v is not None else '-':>{w}}"
            for v, w in ((s.decode_share, 6), (s.prefill_share, 7))
        )
        client = f"{s.client_cpu:.2f}" if s.client_cpu is not None else "-"
        print(
            f"{s.name:<32} {s.requests:>8} {s.concurrency:>4} {s.tok_s:>7.1f} {s.ttft_p50_ms:>7.0f}ms "
            f"{s.ttft_p95_ms:>7.0f}ms {s.itl_mean_ms:>7.1f}ms {batch:>5} {s.tok_s / base:>5.2f}x{shares} {client:>6}"
        )


def check_targets(baseline: dict[str, Any], by_name: dict[str, Scenario], memory: dict[str, Any]) -> list[dict]:
    """The issue's four targets, each with its measured ratio."""
    base_1 = by_name["base, 1 stream"].tok_s
    checks = [
        ("single stream >= 3x HF generate", base_1 / baseline["tok_s"], 3.0, ">="),
        ("16 streams >= 5x single stream (mix)", by_name["mix, 16 streams"].tok_s / by_name["mix, 1 stream"].tok_s,
         5.0, ">="),
        ("4 adapters >= 0.8x one adapter (16 streams)",
         by_name["4 adapters, 16 streams"].tok_s / by_name["1 adapter, 16 streams"].tok_s, 0.8, ">="),
        ("each adapter < 5% of base memory", max(memory["ratios"]), 0.05, "<"),
    ]  # fmt: skip
    mix_1, mix_16 = by_name["mix, 1 stream"].round_tok_s, by_name["mix, 16 streams"].round_tok_s
    per_round = ", ".join(f"{b / a:.2f}x" for a, b in zip(mix_1, mix_16, strict=True))
    out = []
    for name, value, target, op in checks:
        ok = value >= target if op == ">=" else value < target
        shown = f"{value * 100:.2f}%" if op == "<" else f"{value:.2f}x"
        rounds = f" (rounds: {per_round})" if name.startswith("16 streams") and len(mix_1) > 1 else ""
        print(f"  [{'PASS' if ok else 'FAIL'}] {name}: {shown}{rounds}")
        out.append({"target": name, "value": value, "threshold": target, "pass": ok})
    return out


# -- main ------------------------------------------------------------------------------------------
def scenario_plan() -> list[tuple[str, list[str], int]]:
    """(name, models, concurrency) for each scenario."""
    mix = [MODEL, *ADAPTERS]
    return [
        ("base, 1 stream", [MODEL], 1),
        ("mix, 1 stream", mix, 1),
        ("mix, 4 streams", mix, 4),
        ("mix, 16 streams", mix, 16),
        ("1 adapter, 16 streams", ADAPTERS[:1], 16),
        ("4 adapters, 16 streams", ADAPTERS, 16),
    ]


def load_average() -> tuple[float, float, float]:
    """The machine's 1/5/15-minute load averages (other work skews every number on a shared machine)."""
    return os.getloadavg()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-tokens", type=int, default=64, help="Completion tokens per request.")
    parser.add_argument("--quick", action="store_true", help="One round, fewer requests and baseline prompts.")
    parser.add_argument("--rounds", type=int, default=3, help="Interleaved rounds of every scenario (full runs).")
    parser.add_argument("--activations", choices=["auto", "float32", "int8"], default="auto",
                        help="TUNELOOP_SERVE_ACTIVATIONS of the server.")  # fmt: skip
    parser.add_argument("--json", type=Path, help="Also write every number to this file.")
    parser.add_argument("--max-batch", type=int, default=16, help="TUNELOOP_MAX_BATCH of the server.")
    parser.add_argument("--threads", type=int, help="Torch threads for the baseline and server (default: all cores).")
    parser.add_argument("--keep-home", action="store_true", help="Keep the temporary TUNELOOP_HOME (and its log).")
    parser.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                        help="Extra server environment (repeatable): TUNELOOP_ADAPTIVE_THREADS=false.")  # fmt: skip
    args = parser.parse_args()
    server_env = dict(item.split("=", 1) for item in args.server_env)

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    load_before = load_average()
    home = Path(tempfile.mkdtemp(prefix="tuneloop-serve-bench-"))
    server = None
    try:
        t0 = time.perf_counter()
        model_dir = prepare_home(home)
        folders = make_adapters(model_dir, home / "adapters", N_ADAPTERS)
        register_adapters(home, folders)
        memory = adapter_memory(model_dir, folders, args.activations)
        print(f"setup: {time.perf_counter() - t0:.0f} s", file=sys.stderr)

        from tuneloop.config import Settings
        from tuneloop.data.render import ChatRenderer
        from tuneloop.models import Catalog
        from tuneloop.models.loading import load_tokenizer

        tokenizer = load_tokenizer(Catalog(Settings(home=home, database_url=None)).get(MODEL))
        renderer = ChatRenderer(tokenizer)
        n_base = 2 if args.quick else 4
        prompt_ids = [renderer.render_prompt([{"role": "user", "content": p}]) for p in PROMPTS[:n_base]]
        t0 = time.perf_counter()
        baseline = run_baseline(model_dir, prompt_ids, args.max_tokens, args.threads)
        print(f"baseline: {baseline['tok_s']:.1f} tok/s ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)

        gc.collect()
        server = Server(home, args.max_batch, args.threads, args.activations, server_env)
        server.wait_ready()
        rss_start = server.rss_bytes()
        warm = warm_up(server)
        memory["server_rss_before_bytes"] = rss_start
        memory["server_rss_growth_bytes"] = warm["rss_growth_bytes"]
        memory["server_rss_growth_ratios"] = [g / memory["base_bytes"] for g in warm["rss_growth_bytes"]]

        t0 = time.perf_counter()
        scenarios = run_scenarios(server, 1 if args.quick else args.rounds, args.quick, args.max_tokens)
        print(f"server scenarios: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    finally:
        if server is not None:
            server.stop()
        if args.keep_home:
            print(f"home kept at {home}", file=sys.stderr)
        else:
            shutil.rmtree(home, ignore_errors=True)

    load_after = load_average()
    print()
    print(f"Serving throughput, {MODEL}, max_tokens={args.max_tokens}, greedy, streaming, "
          f"{os.cpu_count()} CPUs, max_batch={args.max_batch}, activations={args.activations}"
          + "".join(f", {k}={v}" for k, v in server_env.items()))  # fmt: skip
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min), {load_after[2]:.2f} (15 min)")
    print()
    print_table(baseline, scenarios)
    print()
    mb = 1024**2
    base_mb = memory["base_bytes"] / mb
    print(f"Adapter memory (r={LORA_RANK}, all linear layers); base model parameters: {base_mb:.0f} MB")
    print("  adapter tensors: " + ", ".join(
        f"{b / mb:.1f} MB ({r * 100:.2f}%)" for b, r in zip(memory["adapter_bytes"], memory["ratios"], strict=True)
    ))  # fmt: skip
    print("  server RSS growth on first use: " + ", ".join(
        f"{g / mb:.1f} MB ({r * 100:.2f}%)"
        for g, r in zip(memory["server_rss_growth_bytes"], memory["server_rss_growth_ratios"], strict=True)
    ))  # fmt: skip
    print(f"  distinct greedy outputs for base + {N_ADAPTERS} adapters: {warm['distinct_outputs']}/{N_ADAPTERS + 1}")
    print()
    print("Targets:")
    by_name = {s.name: s for s in scenarios}
    targets = check_targets(baseline, by_name, memory)
    if args.json:
        payload = {
            "model": MODEL, "max_tokens": args.max_tokens, "max_batch": args.max_batch, "quick": args.quick,
            "cpus": os.cpu_count(), "load_before": load_before, "load_after": load_after, "server_env": server_env,
            "baseline": baseline, "scenarios": [asdict(s) for s in scenarios],
            "memory": memory, "warm_up_outputs": warm["outputs"], "targets": targets,
        }  # fmt: skip
        args.json.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
