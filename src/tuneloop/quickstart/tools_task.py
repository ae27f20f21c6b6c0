"""A generated function-calling task: the quick start's smart-home requests as seven typed functions.

Each example lists the tools and asks one request; the answer calls the right function with typed
arguments (a room from a fixed list, an integer temperature, a boolean, free text for a song or an
item), sometimes two functions at once ("... and ..."), and some requests need no tool at all
(a greeting, a thank-you) and get a short text answer. ``benchmarks/tools_eval.py`` trains on it.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from tuneloop.quickstart.task import ARTISTS, CITIES, ITEMS, ROOMS

SYSTEM = "You control a smart home. Call the right tool for each request; answer in words when no tool fits."
WHEN = ["today", "tomorrow", "this weekend", "tonight"]
DOORS = ["front", "back", "garage"]


def _fn(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict:
    parameters = {"type": "object", "properties": properties, "required": required, "additionalProperties": False}
    return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}


ROOM = {"type": "string", "enum": ROOMS}
TOOLS = [
    _fn("set_lights", "Switch a room's lights", {"room": ROOM, "on": {"type": "boolean"}}, ["room", "on"]),
    _fn("set_temperature", "Set the thermostat", {"degrees": {"type": "integer"}, "room": ROOM}, ["degrees"]),
    _fn("play_music", "Play an artist", {"artist": {"type": "string"}, "room": ROOM}, ["artist"]),
    _fn("add_to_list", "Add to the shopping list", {"item": {"type": "string"}}, ["item"]),
    _fn(
        "get_weather",
        "Weather forecast",
        {"city": {"type": "string"}, "when": {"type": "string", "enum": WHEN}},
        ["city", "when"],
    ),  # fmt: skip
    _fn("set_timer", "Start a kitchen timer", {"minutes": {"type": "integer"}}, ["minutes"]),
    _fn("lock_door", "Lock a door", {"door": {"type": "string", "enum": DOORS}}, ["door"]),
]

#: (request template, function, arguments template); ``{x}`` fields are filled from the same draw.
CALLS: list[tuple[str, str, dict[str, str]]] = [
    ("turn on the lights in the {room}", "set_lights", {"room": "{room}", "on": "true"}),
    ("it's too dark in the {room}", "set_lights", {"room": "{room}", "on": "true"}),
    ("switch off the {room} lights", "set_lights", {"room": "{room}", "on": "false"}),
    ("kill the lights in the {room}", "set_lights", {"room": "{room}", "on": "false"}),
    ("set the {room} to {deg} degrees", "set_temperature", {"degrees": "{deg}", "room": "{room}"}),
    ("it's cold in the {room}, warm it to {deg}", "set_temperature", {"degrees": "{deg}", "room": "{room}"}),
    ("change the thermostat to {deg}", "set_temperature", {"degrees": "{deg}"}),
    ("play some {artist}", "play_music", {"artist": "{artist}"}),
    ("put on {artist} in the {room}", "play_music", {"artist": "{artist}", "room": "{room}"}),
    ("add {item} to my shopping list", "add_to_list", {"item": "{item}"}),
    ("we're out of {item}", "add_to_list", {"item": "{item}"}),
    ("what's the weather in {city} {when}", "get_weather", {"city": "{city}", "when": "{when}"}),
    ("will it rain in {city} {when}", "get_weather", {"city": "{city}", "when": "{when}"}),
    ("set a timer for {min} minutes", "set_timer", {"minutes": "{min}"}),
    ("wake me in {min} minutes", "set_timer", {"minutes": "{min}"}),
    ("lock the {door} door", "lock_door", {"door": "{door}"}),
    ("did I lock the {door} door? lock it", "lock_door", {"door": "{door}"}),
]
#: Requests no tool serves, and the answer to each.
CHAT = [
    ("hello!", "Hello! What can I do for you at home?"),
    ("thanks, that's all", "You're welcome!"),
    (
        "what can you do?",
        "I can switch lights, set the temperature, play music, add to your list, check the "
        "weather, set timers and lock doors.",
    ),  # fmt: skip
    ("tell me a joke", "Sorry, I can only help with your home."),
    ("good night", "Good night!"),
    ("who are you?", "I'm your smart-home assistant."),
]


def _draw(rng: random.Random) -> dict[str, str]:
    return {
        "room": rng.choice(ROOMS), "deg": str(rng.randint(16, 26)), "artist": rng.choice(ARTISTS),
        "item": rng.choice(ITEMS), "city": rng.choice(CITIES), "when": rng.choice(WHEN),
        "min": str(rng.choice([1, 2, 3, 5, 10, 12, 15, 20, 25, 30, 45, 60])), "door": rng.choice(DOORS),
    }  # fmt: skip


def _call(rng: random.Random, values: dict[str, str]) -> tuple[str, dict]:
    template, name, args = rng.choice(CALLS)
    arguments = {}
    for key, value in args.items():
        text = value.format(**values)
        arguments[key] = json.loads(text) if value in ("true", "false", "{deg}", "{min}") else text
    return template.format(**values), {"name": name, "arguments": json.dumps(arguments)}


def make_example(rng: random.Random, n: int) -> dict:
    """One example: tools, system prompt, a request; the answer is one or two calls, or text."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM}]
    kind = rng.random()
    if kind < 0.15:
        request, answer = rng.choice(CHAT)
        messages += [{"role": "user", "content": request}, {"role": "assistant", "content": answer}]
        return {"tools": TOOLS, "messages": messages}
    request, first = _call(rng, _draw(rng))
    functions = [first]
    if kind > 0.9:  # two things at once: two calls in one turn
        second_request, second = _call(rng, _draw(rng))
        if second["name"] != first["name"]:
            request, functions = f"{request} and {second_request}", [first, second]
    if rng.random() < 0.3:
        request = request.capitalize() + rng.choice(["", " please", "!", " thanks"])
    calls = [{"id": f"call_{n}_{i}", "type": "function", "function": f} for i, f in enumerate(functions)]
    messages += [{"role": "user", "content": request}, {"role": "assistant", "tool_calls": calls}]
    return {"tools": TOOLS, "messages": messages}


def write_task(folder: Path, n_train: int = 320, n_test: int = 100, seed: int = 0) -> tuple[Path, Path]:
    """Write ``train.jsonl`` and ``test.jsonl`` into ``folder`` (no request in both)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    paths = []
    for name, n in (("train", n_train), ("test", n_test)):
        rows: list[dict] = []
        while len(rows) < n:
            example = make_example(rng, len(seen))
            request = example["messages"][1]["content"]
            if request not in seen or example["messages"][-1].get("content"):  # chit-chat repeats
                seen.add(request)
                rows.append(example)
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.append(path)
    return paths[0], paths[1]
