"""``edgellm distill`` / ``edgellm finetune`` end to end on tiny models, and their clean errors."""

import json

import pytest
import torch
from conftest import run_cli


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


FLAGS = ["--steps", 4, "--batch-size", 2, "--seq-len", 32, "--val-tokens", 128, "--eval-every", 2, "--lr", 1e-3, "--quiet"]


def test_distill_student_from_teacher(tiny_llama, text_file, tmp_path):
    code, out, err = run_cli("distill", "--teacher", tiny_llama, "--student-from", tiny_llama, "--keep-layers", 2,
                             "--data", text_file, "--out", tmp_path / "s", "--alpha", 0.5, "--temperature", 2,
                             "--json", tmp_path / "r.json", *FLAGS)
    assert code == 0, err
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["steps"] == 4 and r["tokens_seen"] == 4 * 2 * 31 and r["plot"].endswith("curves.png")
    cfg = json.loads((tmp_path / "s" / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 2 and cfg["edgellm"]["distill"]["kept_layers"] == [0, 2]
    assert (tmp_path / "s" / "manifest.json").exists()


def test_distill_prune_ratio_and_resume_flag(tiny_llama, text_file, tmp_path):
    code, _, err = run_cli("distill", "--teacher", tiny_llama, "--student-from", tiny_llama, "--prune-ratio", 0.34,
                           "--data", text_file, "--out", tmp_path / "s", "--save-every", 2, *FLAGS)
    assert code == 0, err
    assert json.loads((tmp_path / "s" / "config.json").read_text())["num_hidden_layers"] == 2


@pytest.mark.parametrize("extra,match", [
    (["--alpha", 1.5], "alpha must lie in"),
    (["--temperature", 0], "temperature must be > 0"),
    (["--temperature", -2], "temperature must be > 0"),
    (["--resume", "NOWHERE"], "not a distillation checkpoint"),
])
def test_distill_bad_input_exits_2(tiny_llama, text_file, tmp_path, extra, match):
    extra = [tmp_path / "none" if x == "NOWHERE" else x for x in extra]
    code, _, err = run_cli("distill", "--teacher", tiny_llama, "--student-from", tiny_llama, "--keep-layers", 2,
                           "--data", text_file, "--out", tmp_path / "s", *FLAGS, *extra)
    assert code == 2 and match in err and "Traceback" not in err


def test_distill_empty_data_and_missing_layers(tiny_llama, tmp_path):
    empty = tmp_path / "e.txt"
    empty.write_text("\n")
    code, _, err = run_cli("distill", "--teacher", tiny_llama, "--student-from", tiny_llama, "--keep-layers", 2,
                           "--data", empty, "--out", tmp_path / "s", *FLAGS)
    assert code == 2 and "empty" in err
    code, _, err = run_cli("distill", "--teacher", tiny_llama, "--student-from", tiny_llama, "--data", empty,
                           "--out", tmp_path / "s", *FLAGS)
    assert code == 2 and "--keep-layers" in err


def test_finetune_classifier(tiny_bert, tsv_file, tmp_path):
    code, out, err = run_cli("finetune", tiny_bert, "--task", "classification", "--data", tsv_file, "--out", tmp_path / "c",
                             "--steps", 3, "--batch-size", 8, "--val-rows", 16, "--quiet")
    assert code == 0, err
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    assert cfg["architectures"] == ["BertForSequenceClassification"]
    from transformers import AutoModelForSequenceClassification

    assert AutoModelForSequenceClassification.from_pretrained(tmp_path / "c").config.num_labels == 2
    assert (tmp_path / "c" / "distill" / "eval.jsonl").read_text().count("val_accuracy") == 2


def test_two_processes_under_accelerate_launch(tiny_llama, text_file, tmp_path):
    """DDP over gloo on the CPU: each process reads its own micro-batches, so twice the tokens per step."""
    import os
    import subprocess
    import sys

    # accelerate is a core dependency: its CLI runs as a module of this interpreter (no launcher script to look for)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29531",
           "-m", "edgellm.distillation", "--teacher", str(tiny_llama),
           "--student-from", str(tiny_llama), "--keep-layers", "2", "--data", str(text_file), "--out", str(tmp_path / "s"),
           "--json", str(tmp_path / "r.json"), *map(str, FLAGS)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["tokens_seen"] == 2 * 4 * 2 * 31 and r["examples_seen"] == 2 * 4 * 2
    assert p.stdout.count("tokens seen") == 1          # only the main process reports
