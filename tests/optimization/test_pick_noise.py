"""The pick respects noise: overlapping speed spreads are decided by paired rounds, and the confidence is reported."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

from conftest import run_cli
from edgellm.optimization.pick import Constraints, settle_noise, spreads_overlap
from edgellm.optimization.space import Row
from edgellm.report.html import confidence_line

ROOT = Path(__file__).resolve().parents[2]


class FakeRuntime:
    """Generates a token every *per_token_s* (±20% jitter): a runtime whose true speed the test knows."""

    name = "fake"
    vocab_size = 1000

    def __init__(self, per_token_s: float, seed: int):
        self.per_token_s, self.rng, self.closed = per_token_s, random.Random(seed), False

    def generate(self, prompt, new_tokens, temperature=0.0):
        for _ in range(new_tokens):
            time.sleep(self.per_token_s * self.rng.uniform(0.8, 1.2))
            yield 1

    def close(self):
        self.closed = True


def row(recipe: str, tok_s: float, size: int = 100, loss: float = 0.01) -> Row:
    return Row(model="m", recipe=recipe, runtime="llama.cpp", kind="q", status="measured", quality_loss=loss,
               quality={"protocol": "full"}, size_bytes=size, decode_tok_s=tok_s, chosen=False)


def setup(a_speed: float, b_speed: float, true_a_s: float, true_b_s: float, spreads=None):
    a, b = row("a", a_speed), row("b", b_speed)
    a.chosen = True                                    # the medians' pick
    opened = {}

    def open_row(r):
        opened[r.recipe] = FakeRuntime(true_a_s if r.recipe == "a" else true_b_s, seed=len(opened))
        return opened[r.recipe]

    spreads = spreads or {a.label: (a_speed * 0.9, a_speed * 1.1), b.label: (b_speed * 0.9, b_speed * 1.1)}
    return a, b, spreads, open_row, opened


def test_overlapping_spreads_are_decided_by_paired_rounds_and_can_overturn_the_medians():
    # the medians say a (10.2 vs 10.0 tok/s, spreads overlap), but b is truly twice as fast
    a, b, spreads, open_row, opened = setup(10.2, 10.0, true_a_s=0.004, true_b_s=0.002)
    chosen, conf = settle_noise([a, b], a, Constraints(max_quality_loss=0.1), "speed", spreads, open_row,
                                rounds=6, prompt_len=4, new_tokens=6)
    assert chosen is b and b.chosen and not a.chosen
    assert conf["contested"] and conf["decided_by"] == "paired rounds" and conf["switched"]
    assert conf["rounds"] == 6 and conf["pick_won"] >= 5 / 6 and conf["runner_up"] == a.label
    assert 1.4 < conf["median_ratio"] < 2.8 and conf["iqr"][0] <= conf["median_ratio"] <= conf["iqr"][1]
    assert all(rt.closed for rt in opened.values())
    assert "won" in confidence_line(conf) and "overturned" in confidence_line(conf)


def test_a_pick_that_is_truly_faster_stays_and_reports_its_confidence():
    a, b, spreads, open_row, _ = setup(10.2, 10.0, true_a_s=0.002, true_b_s=0.004)
    chosen, conf = settle_noise([a, b], a, Constraints(max_quality_loss=0.1), "speed", spreads, open_row,
                                rounds=6, prompt_len=4, new_tokens=6)
    assert chosen is a and a.chosen and not b.chosen
    assert conf["contested"] and not conf["switched"] and conf["pick_won"] >= 5 / 6 and conf["median_ratio"] > 1.4
    assert conf["runner_up"] == b.label


def test_a_tie_within_the_noise_is_decided_by_size_then_quality():
    # equally fast in truth: the paired ratios straddle 1, so the smaller runner-up becomes the pick
    a, b, spreads, open_row, _ = setup(10.2, 10.0, true_a_s=0.003, true_b_s=0.003)
    b.size_bytes = 50
    chosen, conf = settle_noise([a, b], a, Constraints(max_quality_loss=0.1), "speed", spreads, open_row,
                                rounds=8, prompt_len=4, new_tokens=6)
    assert conf["tie"] and conf["iqr"][0] <= 1 <= conf["iqr"][1] and chosen is b and conf["switched"]
    assert "tie" in conf["decided_by"] and "tie within the noise" in confidence_line(conf)
    a, b, spreads, open_row, _ = setup(10.2, 10.0, true_a_s=0.003, true_b_s=0.003)
    a.size_bytes = 50                                  # the medians' pick is also the smaller: it stays
    chosen, conf = settle_noise([a, b], a, Constraints(max_quality_loss=0.1), "speed", spreads, open_row,
                                rounds=8, prompt_len=4, new_tokens=6)
    assert conf["tie"] and chosen is a and not conf["switched"]


def test_apart_spreads_infeasible_runner_up_and_other_objectives_need_no_paired_rounds():
    a, b, spreads, open_row, opened = setup(20.0, 10.0, 0.002, 0.004)
    chosen, conf = settle_noise([a, b], a, Constraints(), "speed", spreads, open_row)
    assert chosen is a and not conf["contested"] and "do not overlap" in conf["decided_by"] and not opened
    a, b, spreads, open_row, opened = setup(10.2, 10.0, 0.002, 0.004)
    b.quality_loss = 0.5                               # the runner-up misses the quality budget
    chosen, conf = settle_noise([a, b], a, Constraints(max_quality_loss=0.1), "speed", spreads, open_row)
    assert chosen is a and conf["decided_by"] == "the only feasible candidate" and not opened
    chosen, conf = settle_noise([a, b], a, Constraints(), "size", spreads, open_row)
    assert chosen is a and not conf["contested"] and not opened
    assert spreads_overlap((1, 2), (2, 3)) and not spreads_overlap((1, 2), None)


def test_optimize_reports_the_pick_confidence(tiny_llama, text_file, tmp_path):
    code, out, err = run_cli(
        "optimize", "--model", tiny_llama, "--eval-text", text_file, "--ctx", "64", "--screen-tokens", "128",
        "--full-tokens", "256", "--speed-runs", "3", "--speed-in-process", "--prompt-len", "8", "--new-tokens", "8",
        "--runtimes", "torch", "--recipes", ROOT / "recipes/fp32.yaml", ROOT / "recipes/w8-rtn-g32.yaml",
        "--max-quality-loss", "3%", "--paired-rounds", "3", "--cache", tmp_path / "c", "--out", tmp_path / "o",
        "--no-progress")
    assert code == 0, err
    r = json.loads((tmp_path / "o" / "results.json").read_text())
    conf = r["pick_confidence"]
    assert conf["runner_up"] in {x["label"] for x in r["rows"]} and conf["runner_up"] != r["chosen"]["label"]
    if conf["contested"]:
        assert conf["rounds"] == 3 and 0 <= conf["pick_won"] <= 1 and conf["median_ratio"] >= 1
    else:
        assert "do not overlap" in conf["decided_by"]
    assert confidence_line(conf) in out
    assert confidence_line(conf).split(":")[0] in (tmp_path / "o" / "report.html").read_text()


@pytest.mark.parametrize("bad", ["0", "-2"])
def test_paired_rounds_must_be_positive(bad, tmp_path):
    code, _, err = run_cli("optimize", "--paired-rounds", bad, "--out", tmp_path / "o")
    assert code == 2 and "paired_rounds must be a positive number" in err
