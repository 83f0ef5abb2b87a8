"""Generate smart-home training and dev data: templates × devices × rooms × values × phrasings.

Every example is one spoken-style command and the one action it means, in edgellm's task format
(one JSON object a line; ``edgellm finetune --task causal-lm`` trains on it, ``edgellm eval
--task-data`` scores on it)::

    {"messages": [{"role": "user", "content": "Switch the hallway lamp off."},
                  {"role": "assistant", "content": "{\\"device\\": \\"light\\", \\"action\\": \\"turn_off\\", ...}"}]}

The assistant's reply is ``json.dumps`` of the action with the keys in the schema's order, and it
validates against ``schema.json`` (checked for every example written). The vocabulary of the
actions comes only from the schema: the tables below map each enum value of ``schema.json`` to the
words people use for it, and ``check_tables`` refuses to run when a table and the schema disagree.
**To add a device**, add it to the ``device`` enum (and any new action to ``action``) in
``schema.json``, then give it a row in ``DEVICES`` (its nouns and the actions it takes) and, for a
new action, phrasings in ``TEMPLATES``. Nothing else changes.

Phrasings are templates with slots ``{dev}`` (a device noun), ``{room}``, ``{n}`` (a number) and
``{genre}``; a template without ``{room}`` gives ``room: null``. Each action's templates are split in
two: those marked ``dev`` make the held-out dev split, so dev measures generalisation to phrasings the
training set never used. None of the templates is a phrasing of the 30 test commands in
``commands.jsonl`` (this file never reads them; ``tests/examples/test_smart_home_generator.py`` checks
that no test command, nor one with its slot values swapped, appears in either split).

    python examples/smart_home/generate.py --out out/smart_home            # train.jsonl (4000), dev.jsonl (500)
    python examples/smart_home/generate.py --out out/smart_home --train 8000 --seed 1

Deliberately absent: commands with two actions, relative changes ("a bit warmer"), and any value
outside the schema.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCHEMA = HERE / "schema.json"

# room enum value -> the words for it
ROOMS = {
    "living_room": ["living room", "lounge", "family room"],
    "kitchen": ["kitchen"],
    "bedroom": ["bedroom"],
    "bathroom": ["bathroom"],
    "office": ["office", "study"],
    "hallway": ["hallway", "hall"],
    "garage": ["garage"],
}
# device enum value -> its nouns and the actions it takes
DEVICES = {
    "light": {"nouns": ["light", "lights", "lamp", "lamps", "ceiling light"],
              "actions": ["turn_on", "turn_off", "set_brightness"]},
    "speaker": {"nouns": ["speaker", "speakers", "smart speaker"],
                "actions": ["turn_on", "turn_off", "set_volume", "play_music", "pause"]},
    "thermostat": {"nouns": ["thermostat", "heating"], "actions": ["turn_on", "turn_off", "set_temperature"]},
    "tv": {"nouns": ["tv", "TV", "television"], "actions": ["turn_on", "turn_off", "set_volume", "pause"]},
    "fan": {"nouns": ["fan", "ceiling fan"], "actions": ["turn_on", "turn_off"]},
    "blinds": {"nouns": ["blinds", "shades", "curtains"], "actions": ["open", "close"]},
    "door_lock": {"nouns": ["door", "door lock"], "actions": ["lock", "unlock"]},
    "vacuum": {"nouns": ["vacuum", "robot vacuum", "vacuum cleaner"], "actions": ["turn_on", "turn_off", "pause"]},
    "coffee_maker": {"nouns": ["coffee maker", "coffee machine"], "actions": ["turn_on", "turn_off"]},
}
# the value each action carries: a number range, the genre enum, or none
VALUES = {"set_brightness": range(5, 101, 5), "set_volume": range(0, 101, 5), "set_temperature": range(15, 29),
          "play_music": "genre"}
GENRES = ["jazz", "classical", "rock", "pop", "light"]      # the string values of the schema's value field
NO_ROOM = {"door_lock": ["front door", "main door"]}        # nouns that name no room (room: null)

# action -> phrasings; a leading "dev:" marks a phrasing kept for the dev split
TEMPLATES = {
    "turn_on": [
        "switch on the {dev} in the {room}", "switch the {room} {dev} on", "please turn the {dev} on in the {room}",
        "{room} {dev} on please", "could you turn on the {dev} in the {room}", "power up the {room} {dev}",
        "activate the {dev} in the {room}", "can the {dev} come on", "switch on the {dev}", "{dev} on",
        "get the {dev} going in the {room}", "i need the {room} {dev} on",
        "dev:can you switch on the {room} {dev}", "dev:go ahead and turn on the {dev}",
        "dev:fire up the {dev} in the {room}", "dev:would you power on the {room} {dev}",
    ],
    "turn_off": [
        "switch off the {dev} in the {room}", "switch the {room} {dev} off", "in the {room}, turn the {dev} off",
        "please turn off the {room} {dev}", "{room} {dev} off", "power down the {dev} in the {room}",
        "deactivate the {room} {dev}", "turn off the {dev}", "shut off the {dev}", "{dev} off now",
        "i don't need the {dev} in the {room} anymore", "could you switch the {dev} off",
        "dev:cut the {dev} in the {room}", "dev:can you turn the {room} {dev} off",
        "dev:stop the {dev}", "dev:power off the {room} {dev} please",
    ],
    "set_brightness": [
        "bring the {room} {dev} to {n} percent", "{dev} in the {room} to {n}%", "change the {dev} brightness to {n}",
        "make the {room} {dev} {n} percent bright", "adjust the {dev} in the {room} to {n} percent",
        "brightness of the {dev} to {n} percent", "set the {dev} brightness in the {room} to {n}",
        "dev:i want the {room} {dev} at {n} percent", "dev:put the {dev} at {n}% brightness",
        "dev:can you set the {dev} in the {room} to {n} percent brightness",
    ],
    "set_temperature": [
        "set the {dev} in the {room} to {n} degrees", "make it {n} degrees in the {room}",
        "{room} temperature {n} please", "change the {room} {dev} to {n}", "heat the {room} to {n} degrees",
        "set the temperature to {n}", "i want {n} degrees", "adjust the {dev} to {n} degrees",
        "dev:please warm the {room} up to {n} degrees", "dev:could you put the {dev} on {n}",
        "dev:temperature in the {room} should be {n}",
    ],
    "set_volume": [
        "set the {room} {dev} volume to {n}", "turn the {dev} in the {room} to volume {n}",
        "change the volume of the {dev} to {n}", "{dev} volume {n}", "make the {room} {dev} volume {n}",
        "adjust the {dev} volume in the {room} to {n}", "set the volume on the {dev} to {n} percent",
        "dev:put the {room} {dev} at volume {n}", "dev:could you set the {dev} to volume {n} please",
        "dev:i want the volume of the {room} {dev} at {n}",
    ],
    "play_music": [
        "queue up {genre} in the {room}", "play me some {genre} music", "fill the {room} with {genre} music",
        "i want to hear {genre} in the {room}", "put {genre} on the {room} {dev}", "can you play {genre}",
        "play {genre} on the {dev}", "let's have some {genre} music", "some {genre} in the {room} please",
        "dev:could you put on {genre} music", "dev:play a bit of {genre} in the {room}",
        "dev:start {genre} on the {dev} in the {room}",
    ],
    "pause": [
        "in the {room}, pause the {dev}", "pause the {room} {dev}", "pause the {dev}", "hold the {dev}",
        "put the {dev} on pause", "can you pause the {dev} in the {room}",
        "dev:pause {dev} playback in the {room}", "dev:hit pause on the {dev}",
    ],
    "open": [
        "open the {dev} in the {room}", "open up the {dev} in the {room}", "raise the {room} {dev}", "could the {dev} be opened",
        "pull up the {dev} in the {room}", "could you open the {dev} please", "let some light into the {room}",
        "dev:can you raise the {dev} in the {room}", "dev:please open up the {room} {dev}",
    ],
    "close": [
        "close the {dev} in the {room}", "lower the {room} {dev}", "close up the {dev}", "draw the {dev} in the {room}",
        "pull down the {room} {dev}", "please lower the {dev}", "make the {room} dark",
        "dev:could you draw the {room} {dev} please", "dev:bring the {dev} down in the {room}",
    ],
    "lock": [
        "put the lock on the {room} {dev}", "the {dev} needs locking", "secure the {room} {dev}", "make sure the {dev} is locked",
        "lock up the {dev}", "dev:could you lock the {dev} in the {room}", "dev:is the {dev} locked? lock it",
    ],
    "unlock": [
        "unlock the {dev} to the {room}", "open the lock on the {dev}", "unlock the {dev} now", "unbolt the {room} {dev}",
        "let me in through the {dev}", "dev:could you unlock the {dev} please", "dev:release the {room} {dev} lock",
    ],
}
# phrasings that name no device: the device they mean
IMPLIED_DEVICE = {"make it {n} degrees in the {room}": "thermostat", "{room} temperature {n} please": "thermostat",
                  "heat the {room} to {n} degrees": "thermostat", "set the temperature to {n}": "thermostat",
                  "i want {n} degrees": "thermostat", "dev:please warm the {room} up to {n} degrees": "thermostat",
                  "dev:temperature in the {room} should be {n}": "thermostat",
                  "queue up {genre} in the {room}": "speaker", "play me some {genre} music": "speaker",
                  "fill the {room} with {genre} music": "speaker", "i want to hear {genre} in the {room}": "speaker",
                  "can you play {genre}": "speaker", "let's have some {genre} music": "speaker",
                  "some {genre} in the {room} please": "speaker", "dev:could you put on {genre} music": "speaker",
                  "dev:play a bit of {genre} in the {room}": "speaker",
                  "let some light into the {room}": "blinds", "make the {room} dark": "blinds"}
FIELDS = ("device", "action", "room", "value")


def check_tables(schema: dict) -> None:
    """Exit with a message when the tables use a value the schema does not allow, or miss one it does."""
    props = schema["properties"]
    rooms = set(props["room"]["anyOf"][0]["enum"])
    devices, actions = set(props["device"]["enum"]), set(props["action"]["enum"])
    genres = {v for alt in props["value"]["anyOf"] for v in alt.get("enum", [])}
    used_actions = {a for d in DEVICES.values() for a in d["actions"]}
    problems = [f"{what} {sorted(bad)} not in schema.json" for what, bad in (
        ("rooms", set(ROOMS) - rooms), ("devices", set(DEVICES) - devices), ("actions", used_actions - actions),
        ("genres", set(GENRES) - genres), ("templates for actions", set(TEMPLATES) - actions)) if bad]
    problems += [f"{what} {sorted(bad)} from schema.json have no table entry" for what, bad in (
        ("rooms", rooms - set(ROOMS)), ("devices", devices - set(DEVICES)), ("actions", actions - set(TEMPLATES)),
        ("genres", genres - set(GENRES))) if bad]
    problems += [f"action '{a}' of a device has no phrasings" for a in used_actions - set(TEMPLATES)]
    templates = {t for ts in TEMPLATES.values() for t in ts}
    problems += [f"IMPLIED_DEVICE names '{t}', which is no template" for t in set(IMPLIED_DEVICE) - templates]
    problems += [f"IMPLIED_DEVICE gives '{d}', not in schema.json" for d in set(IMPLIED_DEVICE.values()) - devices]
    if problems:
        sys.exit("generate.py: the tables and schema.json disagree: " + "; ".join(problems))


def expand(template: str, action: str) -> list[tuple[str, dict]]:
    """Every (text, action dict) the template gives over the tables' devices, rooms and values."""
    implied = IMPLIED_DEVICE.get(template)
    text = template.removeprefix("dev:")
    devices = [implied] if implied else [d for d, spec in DEVICES.items() if action in spec["actions"]]
    out = []
    for device in devices:
        if "{dev}" in text:
            nouns = [(n, None) for n in DEVICES[device]["nouns"]]
            if "{room}" not in text:             # "the front door" names no room
                nouns += [(n, None) for n in NO_ROOM.get(device, [])]
        else:
            nouns = [(None, None)]
        rooms = [(w, r) for r, words in ROOMS.items() for w in words] if "{room}" in text else [(None, None)]
        if "{n}" in text:
            values = [(str(v), v) for v in VALUES[action]]
        elif "{genre}" in text:
            values = [(g, g) for g in GENRES]
        else:
            values = [(None, None)]
        for (noun, _), (room_word, room), (vtext, value) in itertools.product(nouns, rooms, values):
            s = text.format(dev=noun, room=room_word, n=vtext, genre=vtext)
            out.append((s, {"device": device, "action": action, "room": room, "value": value}))
    return out


def surface(text: str, rng: random.Random) -> str:
    """Sentence case and an ending, as a person would type or a speech recogniser would write it."""
    text = text[0].upper() + text[1:]
    return text + rng.choice([".", ".", "", "!"]) if not text.endswith("?") else text


def generate(n_train: int, n_dev: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(train, dev) examples: every template expanded, then sampled evenly over actions without repeats.

    >>> train, dev = generate(200, 50)
    >>> len(train), len(dev), train[0]["messages"][1]["role"]
    (200, 50, 'assistant')
    """
    rng = random.Random(seed)
    pools: dict[str, dict[str, list]] = {"train": {}, "dev": {}}
    for action, templates in TEMPLATES.items():
        for t in templates:
            split = "dev" if t.startswith("dev:") else "train"
            pools[split].setdefault(action, []).extend(expand(t, action))
    out = {}
    for split, n in (("train", n_train), ("dev", n_dev)):
        groups = [rng.sample(p, len(p)) for _, p in sorted(pools[split].items())]
        picked, i = [], 0
        while len(picked) < n and any(groups):               # round-robin over actions: no action dominates
            g = groups[i % len(groups)]
            if g:
                picked.append(g.pop())
            i += 1
        rng.shuffle(picked)
        out[split] = [example(surface(text, rng), action) for text, action in picked]
    return out["train"], out["dev"]


def example(text: str, action: dict) -> dict:
    reply = json.dumps({k: action[k] for k in FIELDS})
    return {"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": reply}]}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for train.jsonl and dev.jsonl")
    ap.add_argument("--train", type=int, default=4000, help="training examples")
    ap.add_argument("--dev", type=int, default=500, help="dev examples (held-out phrasings)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    import jsonschema

    schema = json.loads(SCHEMA.read_text())
    check_tables(schema)
    train, dev = generate(args.train, args.dev, args.seed)
    validator = jsonschema.validators.validator_for(schema)(schema)
    for rows in (train, dev):
        for r in rows:
            validator.validate(json.loads(r["messages"][-1]["content"]))
    out = Path(args.out)
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "dev.jsonl", dev)
    print(f"wrote {len(train)} training and {len(dev)} dev examples to {out}")


if __name__ == "__main__":
    main()
