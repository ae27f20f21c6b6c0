"""Does DPO teach the bundled model a required reply format? Confirmations in ALL CAPS.

Builds a preference task with tuneloop's own code: smart-home requests (the quick start's rooms,
artists, items and cities) and a system prompt that asks for a one-sentence confirmation written in
ALL CAPS, which the base model ignores. Each request gets a pair: a reply in capitals (preferred)
and the same reply in ordinary case (non-preferred). With ``--pairs on-policy`` (the default) the
reply is the base model's own greedy answer, served by tuneloop, as preference data is usually
collected; with ``--pairs written`` it is a confirmation written by a template, a reply the base
model would not give. Starts a tuneloop server, trains
``smollm2-135m-instruct`` through the API with the official ``openai`` client and
``method={"type": "dpo", ...}`` (LoRA, auto hyperparameters, beta as given), then compares the base
model and the DPO model on held-out requests:

- preference accuracy: the fraction of held-out pairs whose preferred reply the model itself finds
  more likely (summed log-probability of the reply's tokens, scored with tuneloop's packed pairs);
- DPO reward accuracy: the job's ``full_valid_preference_accuracy`` (the preferred reply's
  log-ratio to the reference beats the other's; 50% before training by definition, ties counting half);
- follow rate: the fraction of greedy answers (chat completions, temperature 0) whose letters are all
  capitals, and the mean share of capital letters;
- on topic: the fraction of greedy answers that name the request's subject (its room, artist, item or
  city), and of answers both all in capitals and on topic. A policy pushed too far from the reference
  writes capitalised gibberish: all caps, nothing on topic.

    python benchmarks/dpo_eval.py                       # 200 training pairs, 60 held-out requests, auto
    python benchmarks/dpo_eval.py --lr-multiplier 11.3  # the supervised auto rule's learning rate at batch 8

Results go to ``--out`` (default ``dpo-results/``).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BASE = "smollm2-135m-instruct"
SYSTEM = "You are a smart-home assistant. Confirm each request in one short sentence, written in ALL CAPS."


def requests_and_confirmations(rng: random.Random) -> tuple[str, str, str]:
    """One generated request, its confirmation in ordinary case, and its subject (room, artist, item or city)."""
    from tuneloop.quickstart.task import ARTISTS, CITIES, ITEMS, ROOMS, WHEN

    room, artist, item = rng.choice(ROOMS), rng.choice(ARTISTS), rng.choice(ITEMS)
    city, when, deg = rng.choice(CITIES), rng.choice(WHEN), rng.randint(16, 26)
    kinds = [
        (f"turn on the lights in the {room}", f"Turning on the lights in the {room}.", room),
        (f"switch off the {room} lights", f"The {room} lights are now off.", room),
        (f"set the {room} to {deg} degrees", f"Setting the {room} to {deg} degrees.", room),
        (f"play some {artist} in the {room}", f"Playing {artist} in the {room}.", artist),
        (f"add {item} to my shopping list", f"I added {item} to your shopping list.", item),
        (f"what's the weather in {city} {when}", f"Checking the weather in {city} {when}.", city),
        (f"remind me to buy {item} {when}", f"I will remind you to buy {item} {when}.", item),
        (f"lock the {room} door", f"The {room} door is locked.", room),
    ]
    request, confirmation, subject = rng.choice(kinds)
    if rng.random() < 0.4:
        request = request.capitalize() + rng.choice(["", "?", "!", " please", " thanks"])
    return request, confirmation, subject


def make_requests(n_train: int, n_test: int, seed: int) -> tuple[list[tuple[str, str, str]], ...]:
    """(request, written confirmation, subject) for the training and the held-out split (no request in both)."""
    rng, seen, out = random.Random(seed), set(), []
    while len(out) < n_train + n_test:
        item = requests_and_confirmations(rng)
        if item[0].lower() not in seen:
            seen.add(item[0].lower())
            out.append(item)
    return out[:n_train], out[n_train:]


def messages(request: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": request}]


def write_pairs(path: Path, requests: list[str], replies: list[str]) -> int:
    """A preference file: each reply in capitals (preferred) over itself as it is; replies without a lowercase
    letter (already in capitals, or empty) make no pair. Returns the number of pairs."""
    rows = [{"input": {"messages": messages(q)}, "preferred_output": [{"role": "assistant", "content": r.upper()}],
             "non_preferred_output": [{"role": "assistant", "content": r}]}
            for q, r in zip(requests, replies, strict=True) if r.strip() and r != r.upper()]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return len(rows)


def greedy_answers(client, model: str, requests: list[str], concurrency: int = 4) -> list[str]:
    """The model's greedy answers (at most 40 tokens) through the chat completions API."""

    def ask(request: str) -> str:
        answer = client.chat.completions.create(model=model, messages=messages(request), temperature=0, max_tokens=40)
        return answer.choices[0].message.content or ""

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(ask, requests))


def policy_accuracy(settings, valid: Path, adapter: Path | None) -> float:
    """Fraction of held-out pairs whose preferred reply the model (base, or base + adapter) finds more likely."""
    import torch

    from tuneloop.data.examples import load_examples, render_preferences
    from tuneloop.data.render import ChatRenderer
    from tuneloop.models import Catalog, load_model
    from tuneloop.train.dpo import score_pairs
    from tuneloop.train.packed import PackedCausalLM
    from tuneloop.train.pairs import to_pair

    model, tokenizer, _ = load_model(Catalog(settings), BASE, device="cpu")
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    _, examples = load_examples(valid)
    pairs = [p for c, r in render_preferences(ChatRenderer(tokenizer), examples) if (p := to_pair(c, r))]
    scores = score_pairs(PackedCausalLM(model), pairs, 1024, torch.device("cpu"))
    return (scores[:, 0] > scores[:, 1]).double().mean().item()


def caps_share(text: str) -> float:
    letters = [c for c in text if c.isalpha()]
    return sum(c.isupper() for c in letters) / len(letters) if letters else 0.0


def follow_rate(answers: list[str], subjects: list[str]) -> dict:
    """Greedy answers to the held-out requests: all in capitals, share of capitals, on topic, both; the answers."""
    caps = [caps_share(a) == 1.0 for a in answers]
    topic = [s.lower() in a.lower() for a, s in zip(answers, subjects, strict=True)]
    n = len(answers)
    return {"caps": sum(caps) / n, "capitals": sum(caps_share(a) for a in answers) / n, "topic": sum(topic) / n,
            "both": sum(c and t for c, t in zip(caps, topic, strict=True)) / n, "answers": answers}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=200, help="Training pairs.")
    parser.add_argument("--test", type=int, default=60, help="Held-out requests (pairs).")
    parser.add_argument("--beta", default="auto", help="DPO's beta, or auto (0.1).")
    parser.add_argument("--lr-multiplier", default="auto", help="Learning-rate multiplier, or auto.")
    parser.add_argument("--epochs", default="auto", help="Epochs, or auto.")
    parser.add_argument(
        "--pairs",
        choices=("on-policy", "written"),
        default="on-policy",
        help="Replies: the base model's own greedy answers, or template-written confirmations.",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("dpo-results"))
    args = parser.parse_args()

    from tuneloop.api.process import ServerProcess
    from tuneloop.config import get_settings
    from tuneloop.jobs.follow import watch
    from tuneloop.models import Catalog
    from tuneloop.store.db import make_engine
    from tuneloop.store.jobs import JobStore

    settings = get_settings()
    Catalog(settings).ensure_ready(Catalog(settings).get(BASE))
    args.out.mkdir(parents=True, exist_ok=True)
    train_requests, test_requests = make_requests(args.train, args.test, args.seed)
    train_file, valid_file = args.out / "train.jsonl", args.out / "valid.jsonl"
    subjects, held_out = [s for _, _, s in test_requests], [q for q, _, _ in test_requests]
    number = lambda value, cast: value if value == "auto" else cast(value)  # noqa: E731
    hyperparameters = {"beta": number(args.beta, float), "learning_rate_multiplier": number(args.lr_multiplier, float),
                       "n_epochs": number(args.epochs, int)}  # fmt: skip
    server = ServerProcess(settings.home, log_path=args.out / "server.log", api_key=settings.api_key).wait_ready()
    client = server.client(max_retries=2, timeout=600)
    try:
        base_answers = greedy_answers(client, BASE, held_out)
        if args.pairs == "on-policy":
            train_replies = greedy_answers(client, BASE, [q for q, _, _ in train_requests])
            valid_replies = base_answers
        else:
            train_replies, valid_replies = [c for _, c, _ in train_requests], [c for _, c, _ in test_requests]
        n_pairs = (write_pairs(train_file, [q for q, _, _ in train_requests], train_replies),
                   write_pairs(valid_file, held_out, valid_replies))  # fmt: skip
        files = []
        for path in (train_file, valid_file):
            with path.open("rb") as f:
                files.append(client.files.create(file=f, purpose="fine-tune"))
        base_follow = follow_rate(base_answers, subjects)
        started = time.time()
        job = client.fine_tuning.jobs.create(
            model=BASE, training_file=files[0].id, validation_file=files[1].id, suffix="caps",
            method={"type": "dpo", "dpo": {"hyperparameters": hyperparameters}},
        )  # fmt: skip
        job = watch(client, job.id)
        if job.status != "succeeded":
            raise SystemExit(f"{job.id} {job.status}: {job.error}")
        wall = time.time() - started
        events = list(client.fine_tuning.jobs.list_events(job.id, limit=1000))
        metrics = [e.data for e in reversed(events) if e.type == "metrics"]
        reward_accuracy = next(m["full_valid_preference_accuracy"] for m in reversed(metrics)
                               if m.get("full_valid_preference_accuracy") is not None)  # fmt: skip
        tuned_follow = follow_rate(greedy_answers(client, job.fine_tuned_model, held_out), subjects)
    finally:
        server.stop()
    engine = make_engine(settings)
    adapter = Path(JobStore(engine).get_model(job.fine_tuned_model).path)
    engine.dispose()
    base_pref, tuned_pref = policy_accuracy(settings, valid_file, None), policy_accuracy(settings, valid_file, adapter)

    hp = job.method.dpo.hyperparameters
    cells = lambda f: f"{f['caps']:.1%} | {f['capitals']:.1%} | {f['topic']:.1%} | {f['both']:.1%}"  # noqa: E731
    rows = [
        "| model | preference accuracy | DPO reward accuracy | answers all in caps | capital letters | on topic "
        "| caps and on topic |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| base ({BASE}) | {base_pref:.1%} | 50.0% (by definition) | {cells(base_follow)} |",
        f"| DPO (LoRA, beta {hp.beta}, lr x{hp.learning_rate_multiplier}) | {tuned_pref:.1%} | {reward_accuracy:.1%} "
        f"| {cells(tuned_follow)} |",
    ]
    note = (f"{args.pairs} pairs: {n_pairs[0]} training, {n_pairs[1]} held-out (of {args.test} held-out requests, "
            f"seed {args.seed}); {hp.n_epochs} epochs, "
            f"batch {hp.batch_size}, lr x{hp.learning_rate_multiplier}, beta {hp.beta}; {len(metrics)} steps, "
            f"{job.trained_tokens:,} tokens; job wall time {wall / 60:.1f} min.")  # fmt: skip
    table = "\n".join(rows) + "\n\n" + note + "\n"
    answered = zip(held_out, base_follow["answers"], tuned_follow["answers"], strict=True)
    samples = [{"request": r, "base": b, "dpo": t} for r, b, t in list(answered)[:8]]
    (args.out / "table.md").write_text(table, encoding="utf-8")
    (args.out / "result.json").write_text(json.dumps({"job": job.to_dict(), "metrics": metrics, "samples": samples,
                                                      "base": base_follow, "dpo": tuned_follow},
                                                     indent=2), encoding="utf-8")  # fmt: skip
    print(table)
    for s in samples:
        print(f"- {s['request']!r}\n    base: {s['base']!r}\n    dpo:  {s['dpo']!r}")


if __name__ == "__main__":
    main()
