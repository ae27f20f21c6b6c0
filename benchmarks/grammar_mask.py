"""Benchmark grammar engines for constrained decoding: per-token mask cost with SmolLM2's tokenizer.

For each engine (llguidance, xgrammar) and each schema, the script compiles the JSON schema, then
walks the tokens of a schema-valid JSON text: at every step it computes the allowed-token mask (a
bitmask over the 49,152-token vocabulary), checks that the next token is allowed, and advances the
matcher with it. It prints the compile time and the mean / p50 / p99 / max mask time per token,
side by side. Single-threaded (as the engine calls it, one row at a time, on its own thread).
xgrammar is optional here (``pip install xgrammar``; it pulls in triton, about 1 GB); tuneloop uses
llguidance.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/grammar_mask.py [--repeat 3]

Measured (2-core "Intel(R) Xeon(R) Processor" with AVX-512, one thread, llguidance 1.9.1, xgrammar 0.2.9, --repeat 5):

    schema   engine      tokens compile ms  mean µs  p50 µs  p99 µs   max µs
    small    llguidance      23        1.1     43.8    16.9   274.7   1750.2
    small    xgrammar        23        7.1      8.8     2.6    20.3    472.5
    nested   llguidance     177        1.7     16.3    11.2   123.1    237.4
    nested   xgrammar       177        3.6      4.9     2.3    19.8     64.1

Both are far below a decode step (about 5 ms for one stream); tuneloop uses llguidance: no
dependencies (xgrammar pulls in triton, about 1 GB, on a CPU-only install) and an error naming
every JSON Schema keyword it does not implement (xgrammar ignores ``not``, ``if``/``then``,
``patternProperties`` silently, so an unsupported schema would not be a 400).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

MODEL = "smollm2-135m-instruct"

SMALL_SCHEMA = {
    "type": "object",
    "properties": {
        "intent": {"type": "string", "enum": ["lights_on", "lights_off", "set_temperature", "play_music"]},
        "room": {"type": "string"},
        "value": {"type": "integer"},
    },
    "required": ["intent", "room", "value"],
    "additionalProperties": False,
}
SMALL_VALUE = {"intent": "set_temperature", "room": "living room", "value": 21}

NESTED_SCHEMA = {
    "$defs": {
        "address": {
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}, "zip": {"type": "string"}},
            "required": ["street", "city", "zip"],
            "additionalProperties": False,
        },
        "item": {
            "type": "object",
            "properties": {
                "sku": {"type": "string"},
                "quantity": {"type": "integer"},
                "price": {"type": "number"},
                "tags": {"type": "array", "items": {"type": "string", "enum": ["new", "sale", "gift"]}},
            },
            "required": ["sku", "quantity", "price", "tags"],
            "additionalProperties": False,
        },
    },
    "type": "object",
    "properties": {
        "customer": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "contact": {
                    "anyOf": [
                        {
                            "type": "object",
                            "properties": {"email": {"type": "string"}},
                            "required": ["email"],
                            "additionalProperties": False,
                        },
                        {
                            "type": "object",
                            "properties": {"phone": {"type": "string"}},
                            "required": ["phone"],
                            "additionalProperties": False,
                        },
                    ]
                },
                "shipping": {"$ref": "#/$defs/address"},
                "billing": {"anyOf": [{"$ref": "#/$defs/address"}, {"type": "null"}]},
            },
            "required": ["name", "contact", "shipping", "billing"],
            "additionalProperties": False,
        },
        "items": {"type": "array", "items": {"$ref": "#/$defs/item"}},
        "priority": {"type": "string", "enum": ["low", "normal", "high"]},
    },
    "required": ["customer", "items", "priority"],
    "additionalProperties": False,
}
NESTED_VALUE = {
    "customer": {
        "name": "Ada Lovelace",
        "contact": {"email": "ada@example.com"},
        "shipping": {"street": "12 St James's Square", "city": "London", "zip": "SW1Y 4JH"},
        "billing": None,
    },
    "items": [
        {"sku": "BK-0042", "quantity": 2, "price": 19.5, "tags": ["new", "gift"]},
        {"sku": "PN-7", "quantity": 10, "price": 1.25, "tags": []},
        {"sku": "LAMP-3", "quantity": 1, "price": 45.0, "tags": ["sale"]},
    ],
    "priority": "high",
}


def load_tokenizer():
    """SmolLM2's tokenizer, as the serving engine loads it (the bundled model, converted once)."""
    from tuneloop.config import get_settings
    from tuneloop.models import Catalog, load_tokenizer

    catalog = Catalog(get_settings())
    return load_tokenizer(catalog.ensure_ready(catalog.get(MODEL)))


class Llguidance:
    name = "llguidance"

    def __init__(self, tokenizer):
        import llguidance
        import llguidance.hf

        self.llg = llguidance
        self.tok = llguidance.hf.from_tokenizer(tokenizer)

    def compile(self, schema: dict):
        options = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
        grammar = self.llg.LLMatcher.grammar_from_json_schema(schema, defaults=options)
        matcher = self.llg.LLMatcher(self.tok, grammar, log_level=0)
        assert not matcher.is_error(), matcher.get_error()
        return matcher

    def mask(self, matcher, out: torch.Tensor) -> None:
        matcher.unsafe_compute_mask_ptr(out.data_ptr(), out.numel() * 4)

    def advance(self, matcher, token: int) -> None:
        assert matcher.consume_token(token), matcher.get_error()


class Xgrammar:
    name = "xgrammar"

    def __init__(self, tokenizer):
        import xgrammar

        self.xgr = xgrammar
        info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=len(tokenizer))
        self.compiler = xgrammar.GrammarCompiler(info, max_threads=1)

    def compile(self, schema: dict):
        compiled = self.compiler.compile_json_schema(json.dumps(schema), any_whitespace=False, separators=(", ", ": "))
        return self.xgr.GrammarMatcher(compiled)

    def mask(self, matcher, out: torch.Tensor) -> None:
        matcher.fill_next_token_bitmask(out.view(1, -1))

    def advance(self, matcher, token: int) -> None:
        assert matcher.accept_token(token)


def run(engine, tokenizer, schema: dict, value: dict, repeat: int) -> dict:
    """Compile time and per-token mask times for one schema, walking a valid text's tokens."""
    text = json.dumps(value)  # both engines set to json.dumps' separators, no other whitespace
    tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
    words = (len(tokenizer) + 31) // 32
    bitmask = torch.zeros(words, dtype=torch.int32)
    compile_s, times = [], []
    for _ in range(repeat):
        started = time.perf_counter()
        matcher = engine.compile(schema)
        compile_s.append(time.perf_counter() - started)
        for token in tokens:
            started = time.perf_counter()
            engine.mask(matcher, bitmask)
            times.append(time.perf_counter() - started)
            assert int(bitmask[token // 32]) >> (token % 32) & 1, f"{engine.name}: token {token} masked out"
            engine.advance(matcher, token)
    times.sort()
    return {
        "tokens": len(tokens),
        "compile_ms": compile_s[0] * 1e3,  # the first: xgrammar caches compiled schemas
        "mean_us": statistics.mean(times) * 1e6,
        "p50_us": times[len(times) // 2] * 1e6,
        "p99_us": times[min(len(times) - 1, int(len(times) * 0.99))] * 1e6,
        "max_us": times[-1] * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    tokenizer = load_tokenizer()
    engines = []
    for cls in (Llguidance, Xgrammar):
        try:
            started = time.perf_counter()
            engines.append((cls(tokenizer), time.perf_counter() - started))
        except ImportError as exc:
            print(f"{cls.name}: not installed ({exc})")
    print(f"vocabulary {len(tokenizer)} tokens; tokenizer setup: "
          + ", ".join(f"{e.name} {s * 1e3:.0f} ms" for e, s in engines))  # fmt: skip
    header = f"{'schema':<8} {'engine':<11} {'tokens':>6} {'compile ms':>10} {'mean µs':>8} {'p50 µs':>7} "
    print(header + f"{'p99 µs':>7} {'max µs':>8}")
    for label, schema, value in (("small", SMALL_SCHEMA, SMALL_VALUE), ("nested", NESTED_SCHEMA, NESTED_VALUE)):
        for engine, _ in engines:
            r = run(engine, tokenizer, schema, value, args.repeat)
            print(
                f"{label:<8} {engine.name:<11} {r['tokens']:>6} {r['compile_ms']:>10.1f} {r['mean_us']:>8.1f} "
                f"{r['p50_us']:>7.1f} {r['p99_us']:>7.1f} {r['max_us']:>8.1f}"
            )


if __name__ == "__main__":
    main()
