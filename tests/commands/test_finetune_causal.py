"""``edgellm finetune --task causal-lm`` end to end on a tiny chat Llama, and its one-line errors (exit 2)."""

import json

import pytest
import torch
from conftest import make_chat_llama, run_cli, smart_home_rows as task_rows

FAST = ["--steps", "4", "--batch-size", "4", "--rank", "4", "--val-rows", "4", "--eval-every", "2", "--quiet"]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def chat_llama(tmp_path_factory):
    return make_chat_llama(tmp_path_factory.mktemp("tiny") / "chat-llama-cli")


def test_cli_finetunes_and_writes_a_plain_folder(chat_llama, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", task_rows(24))
    code, out, err = run_cli("finetune", chat_llama, "--task", "causal-lm", "--data", data, "--out", tmp_path / "ft",
                             *FAST, "--json", tmp_path / "r.json")
    assert code == 0, err
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["steps"] == 4 and r["config"]["rank"] == 4 and r["task"] == "causal-lm"
    assert r["evals"][-1]["val_rows"] == 4 and "val_exact" in r["evals"][-1]
    folder = tmp_path / "ft"
    assert (folder / "config.json").is_file() and (folder / "distill" / "train.jsonl").is_file()
    assert len((folder / "distill" / "train.jsonl").read_text().splitlines()) == 4
    assert "val_nll" in out
    # epochs: 20 training examples, batch 4 -> 5 steps per epoch
    code, _, err = run_cli("finetune", chat_llama, "--task", "causal-lm", "--data", data, "--out", tmp_path / "ep",
                           "--epochs", "2", "--batch-size", "4", "--rank", "4", "--val-rows", "4", "--eval-every", "0",
                           "--quiet", "--json", tmp_path / "e.json")
    assert code == 0, err
    assert json.loads((tmp_path / "e.json").read_text())["steps"] == 10


@pytest.mark.parametrize("case", ["empty", "no-template", "no-target", "no-completion", "other-task-flag"])
def test_bad_input_is_one_line_and_exit_2(case, chat_llama, tiny_llama, tmp_path):
    model, data, extra = chat_llama, write_jsonl(tmp_path / "train.jsonl", task_rows(12)), []
    expect = {"empty": "has no examples", "no-template": "needs a chat template", "no-target": "matches no module",
              "no-completion": "no completion", "other-task-flag": "--seq-len applies to --task classification"}[case]
    if case == "empty":
        data = write_jsonl(tmp_path / "empty.jsonl", [])
    elif case == "no-template":
        model = tiny_llama
    elif case == "no-target":
        extra = ["--targets", "q_proj", "--targets", "nonexistent_proj"]
    elif case == "no-completion":
        rows = task_rows(12)
        rows[3]["messages"] = rows[3]["messages"][:-1]
        data = write_jsonl(tmp_path / "partial.jsonl", rows)
    else:
        extra = ["--seq-len", "64"]
    code, out, err = run_cli("finetune", model, "--task", "causal-lm", "--data", data, "--out", tmp_path / "o", *FAST, *extra)
    assert code == 2, err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and expect in lines[0] and "Traceback" not in err
    assert not (tmp_path / "o").exists()
