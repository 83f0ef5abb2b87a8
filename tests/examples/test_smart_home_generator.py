"""examples/smart_home/generate.py: schema-valid data, no phrasing of the 30 test commands, dev phrasings unseen in train."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import jsonschema
import pytest

HERE = Path(__file__).resolve().parents[2] / "examples" / "smart_home"


@pytest.fixture(scope="module")
def gen():
    spec = importlib.util.spec_from_file_location("smart_home_generate", HERE / "generate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def splits(gen):
    return gen.generate(4000, 500, seed=0)


def skeleton(text: str, gen) -> str:
    """The command with every slot value (room, device, genre word, number) replaced by a placeholder.

    Two commands with the same skeleton are the same phrasing with slot values swapped. Every word of the
    generator's tables counts as a slot, devices and genres alike ("light" is both), so the check is strict.
    """
    words = {w.lower() for ws in gen.ROOMS.values() for w in ws}
    words |= {n.lower() for d in gen.DEVICES.values() for n in d["nouns"]}
    words |= {n.lower() for ns in gen.NO_ROOM.values() for n in ns} | {g.lower() for g in gen.GENRES}
    words |= {"music"}      # "rock music" and "rock" both name the genre slot
    s = re.sub(r"[^a-z0-9' ]+", " ", text.lower())
    s = re.sub(r"\d+", " <n> ", s)
    for w in sorted(words, key=len, reverse=True):
        s = re.sub(rf"\b{re.escape(w)}\b", " <x> ", s)
    s = re.sub(r"(<x>\s*)+", "<x> ", s)           # "living room light" and "kitchen light" are both one slot run
    s = re.sub(r"\b(please|some|the|a|percent|degrees)\b", " ", s)
    return " ".join(s.split())


def the_test_commands() -> list[dict]:
    return [json.loads(line) for line in (HERE / "commands.jsonl").read_text().splitlines() if line.strip()]


def user_texts(rows) -> list[str]:
    return [r["messages"][0]["content"] for r in rows]


def test_sizes_and_schema(splits):
    train, dev = splits
    assert len(train) == 4000 and len(dev) == 500
    schema = json.loads((HERE / "schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    for r in train + dev:
        assert [m["role"] for m in r["messages"]] == ["user", "assistant"]
        action = json.loads(r["messages"][1]["content"])
        validator.validate(action)
        assert list(action) == ["device", "action", "room", "value"]
    # every device and action of the schema is trained on
    seen = [json.loads(r["messages"][1]["content"]) for r in train]
    assert {a["device"] for a in seen} == set(schema["properties"]["device"]["enum"])
    assert {a["action"] for a in seen} == set(schema["properties"]["action"]["enum"])
    assert len(set(user_texts(train))) == len(train)          # no example repeated


def test_no_test_command_in_training_data(gen, splits):
    train, dev = splits
    test = {skeleton(c["text"], gen): c["text"] for c in the_test_commands()}
    assert len(test) >= 25               # the skeletons still tell the commands apart (the check is not vacuous)
    for split in (train, dev):
        texts = user_texts(split)
        exact = {t.lower().strip(" .!?") for t in texts} & {c["text"].lower().strip(" .!?") for c in the_test_commands()}
        assert not exact
        hits = sorted({test[s] for s in (skeleton(t, gen) for t in texts) if s in test})
        assert not hits, f"test commands whose phrasing (slots swapped) is in the generated data: {hits}"


def test_skeleton_catches_slot_swaps(gen):
    # the check above can fail: a test command with other slot values has the same skeleton
    assert skeleton("Turn on the living room light.", gen) == skeleton("Turn on the kitchen lamps", gen)
    assert skeleton("Play some light music.", gen) == skeleton("Play some jazz music", gen)
    assert skeleton("Set the bedroom thermostat to 21 degrees.", gen) == skeleton("set the office heating to 18", gen)
    assert skeleton("Turn on the living room light.", gen) != skeleton("Turn off the living room light.", gen)


def test_dev_phrasings_unused_by_train(gen, splits):
    train, dev = splits
    train_skeletons = {skeleton(t, gen) for t in user_texts(train)}
    shared = [t for t in user_texts(dev) if skeleton(t, gen) in train_skeletons]
    assert not shared, shared[:5]


def test_tables_must_match_schema(gen, monkeypatch):
    schema = json.loads((HERE / "schema.json").read_text())
    gen.check_tables(schema)
    monkeypatch.setitem(gen.DEVICES, "oven", {"nouns": ["oven"], "actions": ["turn_on"]})
    with pytest.raises(SystemExit, match="oven"):
        gen.check_tables(schema)


def test_cli_writes_both_splits(gen, tmp_path):
    gen.main(["--out", str(tmp_path), "--train", "300", "--dev", "40", "--seed", "3"])
    assert len((tmp_path / "train.jsonl").read_text().splitlines()) == 300
    assert len((tmp_path / "dev.jsonl").read_text().splitlines()) == 40
