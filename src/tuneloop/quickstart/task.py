"""A small, generated task for the quick start: route smart-home requests to one of six intents.

The base model cannot know these labels; a few examples in the prompt help a little; a short LoRA
fine-tune should get nearly all of them right with a much shorter prompt.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SYSTEM = (
    "Route the smart-home request. "
    "Answer with one label: lights_on, lights_off, set_temperature, play_music, add_to_list, weather."
)

ROOMS = ["kitchen", "living room", "bedroom", "bathroom", "office", "garage", "hallway", "basement", "porch", "attic"]
ARTISTS = ["Miles Davis", "Taylor Swift", "the Beatles", "Daft Punk", "Nina Simone", "Radiohead", "Bach", "Adele"]
ITEMS = ["milk", "eggs", "batteries", "coffee", "dish soap", "bread", "apples", "light bulbs", "rice", "tape"]
CITIES = ["Paris", "Tokyo", "Lima", "Oslo", "Nairobi", "Denver", "Madrid", "Seoul", "Cairo", "Boston"]
WHEN = ["today", "tomorrow", "this weekend", "tonight", "on Monday", "right now"]

TEMPLATES: dict[str, list[str]] = {
    "lights_on": [
        "turn on the lights in the {room}",
        "can you switch the {room} lights on",
        "it's too dark in the {room}",
        "lights on in the {room} please",
        "brighten up the {room}",
    ],
    "lights_off": [
        "turn off the {room} lights",
        "switch off the lights in the {room}",
        "kill the lights in the {room}",
        "no more light in the {room} please",
        "darken the {room}",
    ],
    "set_temperature": [
        "set the {room} to {deg} degrees",
        "make it {deg} degrees in the {room}",
        "it's cold in the {room}, warm it to {deg}",
        "change the thermostat to {deg}",
        "I want the {room} at {deg} degrees",
    ],
    "play_music": [
        "play some {artist}",
        "put on {artist} in the {room}",
        "I want to hear {artist}",
        "start a {artist} playlist",
        "music by {artist} please",
    ],
    "add_to_list": [
        "add {item} to my shopping list",
        "we're out of {item}",
        "put {item} on the list",
        "remind me to buy {item}",
        "I need {item}, add it",
    ],
    "weather": [
        "what's the weather in {city} {when}",
        "will it rain in {city} {when}",
        "how hot is it in {city} {when}",
        "do I need an umbrella in {city} {when}",
        "forecast for {city} {when}",
    ],
}
LABELS = list(TEMPLATES)


def make_example(rng: random.Random, label: str | None = None) -> dict:
    """One chat example: system prompt, a generated request, the intent label as the answer."""
    label = label or rng.choice(LABELS)
    text = rng.choice(TEMPLATES[label]).format(
        room=rng.choice(ROOMS), deg=rng.randint(16, 26), artist=rng.choice(ARTISTS), item=rng.choice(ITEMS),
        city=rng.choice(CITIES), when=rng.choice(WHEN),
    )  # fmt: skip
    if rng.random() < 0.3:
        text = text.capitalize() + rng.choice(["", "?", "!", " thanks", " please"])
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": text},
            {"role": "assistant", "content": label},
        ]
    }


def write_task(folder: Path, n_train: int = 240, n_valid: int = 60, seed: int = 0) -> tuple[Path, Path]:
    """Write ``train.jsonl`` and ``valid.jsonl`` (balanced labels, no request in both) into ``folder``."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    splits = {}
    for name, n in (("train", n_train), ("valid", n_valid)):
        rows = []
        while len(rows) < n:
            example = make_example(rng, LABELS[len(rows) % len(LABELS)])
            key = example["messages"][1]["content"]
            if key not in seen:
                seen.add(key)
                rows.append(example)
        rng.shuffle(rows)
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        splits[name] = path
    return splits["train"], splits["valid"]
