"""Task evaluation: reading task files, scoring (exact, per-field, schema, similarity, Wilson), every runtime, the CLI."""

from __future__ import annotations

import json
import shutil

import pytest
from transformers import AutoTokenizer

from conftest import run_cli
from edgellm.errors import EdgeLLMError
from edgellm.evaluation.task import TaskRunner, evaluate_task
from edgellm.evaluation.taskdata import parse_reply, read_task, same_json, similarity, wilson
from edgellm.exporters.executorch import export_executorch
from edgellm.exporters.gguf import export_gguf
from edgellm.exporters.onnx import export_onnx
from edgellm.models import load
from edgellm.runtimes import open_runtime
from edgellm.runtimes.torch import TorchRuntime

CHAT = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>\n{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant:{% endif %}")
SCHEMA = {"type": "object", "properties": {"device": {"type": "string", "enum": ["light", "fan"]},
                                           "on": {"type": "boolean"}},
          "required": ["device", "on"], "additionalProperties": False}
ACTIONS = [{"device": "light", "on": True}, {"device": "fan", "on": False}, {"device": "light", "on": False},
           {"device": "fan", "on": True}]
TEXTS = ["turn the light on", "fan off please", "the light off", "warm fan on"]


@pytest.fixture(scope="module")
def chat_llama(tiny_llama, tmp_path_factory):
    """The tiny Llama with a chat template on its tokenizer."""
    path = tmp_path_factory.mktemp("chat") / "llama"
    shutil.copytree(tiny_llama, path)
    tok = AutoTokenizer.from_pretrained(path)
    tok.chat_template = CHAT
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def rt(chat_llama):
    return TorchRuntime(load(chat_llama), device="cpu", threads=2)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def chat_task(tmp_path, expected=ACTIONS, name="task.jsonl"):
    return write_jsonl(tmp_path / name, [{"messages": [{"role": "user", "content": t}], "expected": a}
                                         for t, a in zip(TEXTS, expected)])


def test_wilson_and_similarity_by_hand():
    lo, hi = wilson(6, 30)
    # p = 0.2, z = 1.96: centre (p + z²/2n)/(1 + z²/n) = 0.23405, half-width 0.13901
    assert lo == pytest.approx(0.09505, abs=1e-4) and hi == pytest.approx(0.37306, abs=1e-4)
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == 1.0 and wilson(10, 10)[0] == pytest.approx(0.7225, abs=1e-4)
    assert similarity("kitten", "sitting") == pytest.approx(1 - 3 / 7)
    assert similarity("a  b", "a b") == 1.0 and similarity("", "x") == 0.0
    assert parse_reply('x {"a": [1, 2]} y') == {"a": [1, 2]} and parse_reply("{bad") is None
    assert not same_json({"v": True}, {"v": 1}) and same_json({"v": 1, "w": None}, {"w": None, "v": 1})


def test_read_task_shapes(tmp_path):
    p = write_jsonl(tmp_path / "t.jsonl", [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": '{"device": "fan", "on": true}'}]},
        {"prompt": "say", "completion": '{"device": "light", "on": false}'},
        {"text": "turn on", "expected": {"device": "light", "on": True}},
    ])
    t = read_task(p, SCHEMA)
    assert len(t) == 3 and t.json_answers and t.fields == ("device", "on")
    assert t[0].messages == ({"role": "user", "content": "hi"},) and t[0].expected == {"device": "fan", "on": True}
    assert t[1].prompt == "say" and t[2].messages == ({"role": "user", "content": "turn on"},)
    free = read_task(write_jsonl(tmp_path / "f.jsonl", [{"prompt": "a", "completion": "b c"}]))
    assert not free.json_answers and free[0].expected == "b c"


@pytest.mark.parametrize("rows, schema, match", [
    ([{"messages": [{"role": "user", "content": "x"}]}], None, "has no expected outputs"),
    ([{"text": "x", "expected": {"device": "oven", "on": True}}], SCHEMA, "fails the task's own schema"),
    ([{"text": "x", "expected": "not json"}], SCHEMA, "not JSON"),
    ([{"foo": 1}], None, "no messages, prompt or text"),
])
def test_read_task_refuses(tmp_path, rows, schema, match):
    with pytest.raises(EdgeLLMError, match=match):
        read_task(write_jsonl(tmp_path / "bad.jsonl", rows), schema)


def test_exact_match_is_scored_on_the_models_own_answers(rt, tmp_path):
    # free text: the model's greedy answers as the expected outputs score 4/4; other answers 0/4
    prompts = [{"prompt": t, "completion": "?"} for t in TEXTS]
    task = read_task(write_jsonl(tmp_path / "p.jsonl", prompts))
    first = evaluate_task(rt, task, max_new_tokens=6)
    assert first.exact_match == 0 and first.n == 4 and first.mean_new_tokens > 0
    answers = [r["reply"] for r in first.rows]
    again = read_task(write_jsonl(tmp_path / "q.jsonl", [{"prompt": t, "completion": a} for t, a in zip(TEXTS, answers)]))
    r = evaluate_task(rt, again, max_new_tokens=6)
    assert r.exact_match == 4 and r.accuracy == 1.0 and r.interval == wilson(4, 4) and r.mean_similarity == 1.0
    assert all(row["latency_s"] > 0 for row in r.rows)


def test_constrained_answers_are_schema_valid_and_fields_scored(rt, tmp_path):
    task = read_task(chat_task(tmp_path), SCHEMA)
    free = evaluate_task(rt, task, max_new_tokens=64)
    assert free.schema_valid == 0                  # a random model writes no JSON by itself
    r = evaluate_task(rt, task, constrained=True, max_new_tokens=64)
    assert r.schema_valid == 4 and r.json_valid == 4
    parsed = [row["parsed"] for row in r.rows]
    # the expected outputs set to the model's constrained answers: everything matches, field by field
    same = read_task(chat_task(tmp_path, parsed, "same.jsonl"), SCHEMA)
    r2 = evaluate_task(rt, same, constrained=True, max_new_tokens=64)
    assert r2.exact_match == 4 and all(v["accuracy"] == 1.0 for v in r2.field_accuracy.values())
    flipped = [dict(p, on=not p["on"]) for p in parsed]
    r3 = evaluate_task(rt, read_task(chat_task(tmp_path, flipped, "flip.jsonl"), SCHEMA), constrained=True,
                       max_new_tokens=64)
    assert r3.exact_match == 0 and r3.field_accuracy["on"]["accuracy"] == 0 and r3.field_accuracy["device"]["accuracy"] == 1


def test_llamacpp_gives_the_same_constrained_answers(chat_llama, rt, tmp_path):
    gguf = export_gguf(load(chat_llama), tmp_path / "chat.gguf", gguf_type="f32")
    task = read_task(chat_task(tmp_path), SCHEMA)
    lrt = open_runtime(str(gguf), threads=2)
    try:
        r = evaluate_task(lrt, task, constrained=True, max_new_tokens=64)
    finally:
        lrt.close()
    ref = evaluate_task(rt, task, constrained=True, max_new_tokens=64)
    assert r.runtime == "llama.cpp" and r.schema_valid == 4
    assert [x["parsed"] for x in r.rows] == [x["parsed"] for x in ref.rows]
    assert [x["prompt_tokens"] for x in r.rows] == [x["prompt_tokens"] for x in ref.rows]   # same chat template


@pytest.mark.parametrize("fmt", ["onnx", "executorch"])
def test_artifact_runtimes_give_the_same_constrained_answers(chat_llama, rt, tmp_path, fmt):
    if fmt == "onnx":
        path = export_onnx(chat_llama, tmp_path / "chat.onnx")
    else:
        path = export_executorch(chat_llama, tmp_path / "chat.pte", max_len=160)
    task = read_task(chat_task(tmp_path), SCHEMA)
    art = open_runtime(str(path), threads=2)
    r = evaluate_task(art, task, constrained=True, max_new_tokens=64)
    ref = evaluate_task(rt, task, constrained=True, max_new_tokens=64)
    assert r.runtime == {"onnx": "onnxruntime", "executorch": "executorch"}[fmt] and r.schema_valid == 4
    assert [x["parsed"] for x in r.rows] == [x["parsed"] for x in ref.rows]


def test_prompt_is_the_chat_template_with_generation_prompt(rt, tmp_path):
    task = read_task(chat_task(tmp_path), SCHEMA)
    ids = TaskRunner(rt, task).prompt_ids(task[0])
    assert rt.tokenizer.decode(ids) == "<s>user: turn the light on</s>\n<s>assistant:"


def test_cli_task_eval_and_json(chat_llama, tmp_path):
    task = chat_task(tmp_path)
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    code, out, err = run_cli("eval", chat_llama, "--task", task, "--schema", schema, "--constrained",
                             "--max-new-tokens", "64", "--threads", "2", "--json", tmp_path / "r.json")
    assert code == 0, err
    assert "4/4" in out and "accuracy [95% CI]" in out
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["schema_valid"] == 4 and r["n"] == 4 and len(r["interval"]) == 2


def test_cli_bad_task_input_is_one_line_exit_2(tiny_llama, chat_llama, tmp_path):
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    no_expected = write_jsonl(tmp_path / "ne.jsonl", [{"messages": [{"role": "user", "content": "x"}]}])
    failing = write_jsonl(tmp_path / "fs.jsonl", [{"text": "x", "expected": {"device": "oven", "on": True}}])
    unconstrainable = tmp_path / "min.json"
    unconstrainable.write_text(json.dumps({"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}}}))
    ints = write_jsonl(tmp_path / "ints.jsonl", [{"text": "x", "expected": {"n": 1}}])
    cases = [
        (("eval", chat_llama, "--task-data", no_expected), "no expected outputs"),
        (("eval", chat_llama, "--task-data", failing, "--schema", schema), "fails the task's own schema"),
        (("eval", tiny_llama, "--task-data", chat_task(tmp_path)), "no chat template"),
        (("eval", chat_llama, "--task-data", ints, "--schema", unconstrainable, "--constrained"), "cannot be enforced"),
        (("eval", chat_llama, "--task-data", chat_task(tmp_path), "--constrained"), "needs the task's JSON schema"),
        (("eval", chat_llama, "--task", "nothing"), "neither a model kind nor a task file"),
    ]
    for argv, msg in cases:
        code, out, err = run_cli(*argv, "--threads", "2")
        assert code == 2, (argv, err)
        assert msg in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_constrained_runs_on_the_runtime_interface_alone(rt, tmp_path):
    # any runtime whose generate takes a logits processor can be constrained: a wrapper with only that surface
    class Bare:
        name = "bare"
        tokenizer = rt.tokenizer

        def generate(self, ids, max_new_tokens, stop_ids=(), logits_processor=None):
            return rt.generate(ids, max_new_tokens, stop_ids=stop_ids, logits_processor=logits_processor)

    class NoProcessor(Bare):
        def generate(self, ids, max_new_tokens, stop_ids=()):
            return rt.generate(ids, max_new_tokens, stop_ids=stop_ids)

    task = read_task(chat_task(tmp_path), SCHEMA)
    assert evaluate_task(Bare(), task, constrained=True, max_new_tokens=64).schema_valid == 4
    with pytest.raises(EdgeLLMError, match="cannot constrain decoding"):
        evaluate_task(NoProcessor(), task, constrained=True)
