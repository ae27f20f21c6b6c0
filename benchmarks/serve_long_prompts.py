"""Long prompts arriving while other requests decode: how much they stall the others.

Starts the real ``tuneloop serve`` on the bundled SmolLM2-135M-Instruct with 4 random LoRA
adapters (as ``serve_throughput.py`` does) and runs, side by side in one server:

* **short streams alone**: 8 closed-loop streaming clients (base model and adapters, short
  prompts, 64 greedy tokens each);
* **short streams + long prompts**: the same 8 clients while a ninth sends prompts of about 700
  tokens (a story of 80 sentences, each one different, so the prefix cache holds only the system
  prompt), one after the other with a pause of half a second, asking for 8 tokens.

For each it prints the short streams' gaps between content chunks (p50/p95/p99/max: a stalled
decode shows in the tail) and tokens/s, and the long prompts' time to first token. The two
scenarios alternate for ``--rounds`` rounds and each pools its rounds.

Usage (about 1.5 minutes on 2 cores)::

    python benchmarks/serve_long_prompts.py [--rounds 2] [--long-prompts 6]
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import serve_throughput as bench  # noqa: E402  (the throughput benchmark's setup and clients)

SHORT_STREAMS, SHORT_TOKENS, LONG_TOKENS = 8, 64, 8
WORDS = ["cat", "dog", "lamp", "kettle", "garden", "porch", "kitchen", "radio", "window", "sofa", "bicycle"]


def long_prompt(rng: random.Random, k: int) -> str:
    """About 700 tokens of a story no other prompt shares beyond the chat template."""
    story = " ".join(f"The {rng.choice(WORDS)} sat on the {rng.choice(WORDS)}." for _ in range(80))
    return f"Story {k}: {story} Summarise the story."


def run(server: bench.Server, rng: random.Random, long_prompts: int, with_long: bool) -> dict[str, list[float]]:
    """Short streams until ``long_prompts`` long requests are done (or for as long, without them)."""
    client = server.client()
    models = [bench.MODEL, *bench.ADAPTERS]
    gaps: list[float] = []
    ttfts: list[float] = []
    tokens = [0]
    stop = threading.Event()

    def short(i: int) -> None:
        n = 0
        while not stop.is_set():
            model, prompt = models[(i + n) % len(models)], bench.PROMPTS[(i + n) % len(bench.PROMPTS)]
            result = bench.stream_one(client, model, prompt, SHORT_TOKENS)
            gaps.extend(result.gaps)
            tokens[0] += result.tokens
            n += 1

    def long_or_wait() -> None:
        try:
            time.sleep(1.0)
            for k in range(long_prompts):
                if with_long:
                    result = bench.stream_one(client, bench.MODEL, long_prompt(rng, k), LONG_TOKENS)
                    ttfts.append(result.ttft)
                else:
                    time.sleep(0.4)  # about what a long request takes, so both scenarios run as long
                time.sleep(0.5)
        finally:
            stop.set()

    start = time.perf_counter()
    with ThreadPoolExecutor(SHORT_STREAMS + 1) as pool:
        futures = [pool.submit(short, i) for i in range(SHORT_STREAMS)] + [pool.submit(long_or_wait)]
        for future in futures:
            future.result()
    return {"gaps": gaps, "ttfts": ttfts, "tok_s": [tokens[0] / (time.perf_counter() - start)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="Rounds of both scenarios, alternating.")
    parser.add_argument("--long-prompts", type=int, default=6, help="Long requests per round.")
    args = parser.parse_args()

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    home = Path(tempfile.mkdtemp(prefix="tuneloop-long-bench-"))
    server = None
    pooled: dict[bool, dict[str, list[float]]] = {False: {}, True: {}}
    try:
        model_dir = bench.prepare_home(home)
        bench.register_adapters(home, bench.make_adapters(model_dir, home / "adapters", bench.N_ADAPTERS))
        server = bench.Server(home, 16, None)
        server.wait_ready()
        bench.warm_up(server)
        rng = random.Random(0)
        for i in range(args.rounds):
            for with_long in (False, True):
                measured = run(server, rng, args.long_prompts, with_long)
                for key, values in measured.items():
                    pooled[with_long].setdefault(key, []).extend(values)
                print(f"  round {i + 1}, {'with' if with_long else 'without'} long prompts: done", file=sys.stderr)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(home, ignore_errors=True)

    print(f"\n{SHORT_STREAMS} short streams ({SHORT_TOKENS} tokens each) beside prompts of ~700 tokens "
          f"({LONG_TOKENS} tokens each), {args.rounds} rounds\n")  # fmt: skip
    columns = ("gap p50", "gap p95", "gap p99", "gap max")
    header = f"{'scenario':<32} " + " ".join(f"{c:>8}" for c in columns) + f" {'tok/s':>7} {'long TTFT p50':>14}"
    print(header)
    print("-" * len(header))
    for with_long, name in ((False, "short streams alone"), (True, "short streams + long prompts")):
        m = pooled[with_long]
        gaps = [g * 1000 for g in m["gaps"]]
        shown = [bench.percentile(gaps, 50), bench.percentile(gaps, 95), bench.percentile(gaps, 99), max(gaps)]
        ttft = f"{bench.percentile(m['ttfts'], 50) * 1000:.0f} ms" if m.get("ttfts") else "-"
        tok_s = sum(m["tok_s"]) / len(m["tok_s"])
        print(f"{name:<32} " + " ".join(f"{v:>6.1f}ms" for v in shown) + f" {tok_s:>7.1f} {ttft:>14}")


if __name__ == "__main__":
    main()
