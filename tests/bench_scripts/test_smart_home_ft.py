"""bench/smart_home_ft.py turns a make smart-home folder into a result record (no model: written JSON files)."""

from __future__ import annotations

import json

import pytest

from bench import smart_home_ft

EVAL = {"task": "commands.jsonl", "runtime": "torch", "n": 30, "constrained": True, "exact_match": 27,
        "interval": [0.744, 0.965], "schema_valid": 30, "mean_latency_s": 0.5, "mean_prompt_tokens": 38.2}
SUMMARY = {"student": "smollm2-135m", "steps": 4, "examples_seen": 64, "tokens_seen": 2000, "train_seconds": 20.0,
           "total_seconds": 30.0, "config": {"batch_size": 16, "rank": 16, "lr": 5e-4},
           "final_eval": {"val_exact": 0.5, "val_nll": 0.7}}


def _folder(tmp_path, evals):
    (tmp_path / "ft" / "distill").mkdir(parents=True)
    (tmp_path / "ft" / "distill" / "summary.json").write_text(json.dumps(SUMMARY))
    (tmp_path / "ft" / "distill" / "curves.png").write_bytes(b"\x89PNG fake")
    for name in evals:
        (tmp_path / name).write_text(json.dumps(EVAL))
    return tmp_path


def test_record_has_the_fine_tune_and_each_eval(tmp_path):
    src = _folder(tmp_path / "run", ["dev_eval.json", "ft_commands_eval.json"])
    out, img = tmp_path / "r.json", tmp_path / "img" / "c.png"
    smart_home_ft.main(["--from", str(src), "--out", str(out), "--img", str(img)])
    r = json.loads(out.read_text())
    ft, acc = r["tables"]
    assert ft["rows"][0]["steps"] == 4 and ft["rows"][0]["train s"] == 20.0
    assert [row["examples"] for row in acc["rows"]] == ["30 test commands", "dev: held-out phrasings"]
    assert acc["rows"][0]["exact"] == "27/30" and acc["rows"][0]["exact 95% CI"] == "74.4%–96.5%"
    assert img.read_bytes() == b"\x89PNG fake" and r["machine"] and r["command"]


def test_a_folder_without_evals_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="no eval JSON"):
        smart_home_ft.main(["--from", str(_folder(tmp_path, [])), "--out", str(tmp_path / "r.json"), "--img", ""])
