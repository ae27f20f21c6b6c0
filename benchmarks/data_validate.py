"""Benchmark the data validator: format checks and full token statistics on large files.

Generates chat JSONL files of 10,000 and 100,000 examples (varied lengths, a shared system
prompt, some multi-turn), validates each in a fresh process, and prints examples/s and peak RSS.
Memory that does not grow with the file shows as equal peaks for the small and the large file.

    .venv/bin/python benchmarks/data_validate.py [--sizes 10000 100000] [--model smollm2-135m-instruct]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = [
    "the",
    "a",
    "play",
    "song",
    "music",
    "weather",
    "book",
    "table",
    "restaurant",
    "tomorrow",
    "rate",
    "stars",
    "movie",
    "at",
    "in",
    "for",
]


def make_file(path: Path, n: int, seed: int = 0) -> None:
    """Write ``n`` synthetic chat examples."""
    rng = random.Random(seed)
    system = {"role": "system", "content": "Classify the user's request. Answer with exactly one label."}
    with path.open("w") as f:
        for i in range(n):
            messages = [system]
            for _ in range(1 if rng.random() < 0.8 else 3):
                text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 30)))
                messages += [
                    {"role": "user", "content": f"{text} #{i}"},
                    {"role": "assistant", "content": rng.choice(["PlayMusic", "GetWeather", "RateBook"])},
                ]
            f.write(json.dumps({"messages": messages}) + "\n")


def child(mode: str, path: Path, model: str) -> None:
    """Validate in this process and print a JSON line of measurements."""
    from tuneloop.config import get_settings
    from tuneloop.data.render import ChatRenderer
    from tuneloop.data.validate import validate_file
    from tuneloop.models import Catalog, load_tokenizer

    renderer, limit, n_params = None, None, None
    if mode == "tokens":
        catalog = Catalog(get_settings())
        entry = catalog.ensure_ready(catalog.get(model))
        renderer, limit, n_params = ChatRenderer(load_tokenizer(entry)), entry.context_length, entry.parameter_count
        renderer.render([{"role": "user", "content": "warm up"}, {"role": "assistant", "content": "ok"}])
        from tuneloop.data.estimate import machine_matmul_flops

        machine_matmul_flops()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    report = validate_file(path, renderer, limit, n_params)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "n": report.n_examples,
                "errors": report.n_errors,
                "seconds": seconds,
                "peak_mb": peak / 1024,
                "growth_mb": (peak - base_rss) / 1024,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), args.model)
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            path = Path(tmp) / f"{n}.jsonl"
            make_file(path, n)
            for mode in ("format", "tokens"):
                out = subprocess.run(
                    [sys.executable, __file__, "--model", args.model, "--child", mode, str(path)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                m = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append((mode, n, path.stat().st_size / 1e6, m))
    header = ("check", "examples", "file MB", "seconds", "examples/s", "peak RSS MB", "growth MB")
    print("{:<10}{:>10}{:>9}{:>9}{:>12}{:>13}{:>11}".format(*header))
    for mode, n, mb, m in rows:
        rate = n / m["seconds"]
        print(
            f"{mode:<10}{n:>10,}{mb:>9.1f}{m['seconds']:>9.2f}{rate:>12,.0f}{m['peak_mb']:>13.0f}{m['growth_mb']:>11.1f}"
        )
    print("targets: format >= 50,000 examples/s, tokens >= 5,000 examples/s; growth flat across sizes")


if __name__ == "__main__":
    main()
