"""The search's quality scores run on the one perplexity loop (evaluate_lm): resume, early rejection, same NLLs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from edgellm.optimization.quality import cls_quality, lm_quality, lm_reference, lm_summary


class FakeLM:
    """Logits that depend on the tokens (a fixed random table); counts the windows it is asked for."""

    name = "fake"
    max_positions = None

    def __init__(self, seed: int, vocab: int = 11):
        self.table = torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(seed)) * 2
        self.calls = 0

    def logits(self, w):
        self.calls += 1
        return self.table[w]


def _windows(n=6, ctx=9):
    return list(torch.randint(0, 11, (n, ctx), generator=torch.Generator().manual_seed(0)))


def _nll(rt, w):
    return F.cross_entropy(rt.table[w][:-1], w[1:], reduction="sum").item()


def test_reference_is_the_summed_nll_of_each_window():
    rt, wins = FakeLM(1), _windows()
    assert lm_reference(rt, wins) == pytest.approx([_nll(rt, w) for w in wins])


def test_same_model_has_zero_loss_and_the_screen_reads_only_its_windows():
    base, wins = FakeLM(1), _windows()
    ref = lm_reference(base, wins)
    cand = FakeLM(1)
    r = lm_quality(cand, wins, ref, max_loss=0.1, screen_windows=2, full=False)
    assert cand.calls == 2 and r["n_windows"] == 2 and r["quality_loss"] == pytest.approx(0.0, abs=1e-9)
    assert not r["early_rejected"]
    # the full protocol resumes from the screen's NLLs: only the 4 other windows run
    full = lm_quality(cand, wins, ref, max_loss=0.1, screen_windows=2, done=r["nlls"], full=True)
    assert cand.calls == 6 and full["n_windows"] == 6 and full["n_tokens"] == 6 * 8
    assert full["perplexity"] == pytest.approx(full["base_perplexity"])


def test_a_bad_candidate_is_rejected_after_the_first_screen_window():
    base, wins = FakeLM(1), _windows()
    ref = lm_reference(base, wins)
    bad = FakeLM(2)
    loss1 = math.exp((_nll(bad, wins[0]) - ref[0]) / 8) - 1
    assert loss1 > 0.2                                   # a different random model is far worse
    r = lm_quality(bad, wins, ref, max_loss=0.1, screen_windows=4, full=True)
    assert r["early_rejected"] and bad.calls == 1 and r["n_windows"] == 1
    assert r["quality_loss"] == pytest.approx(loss1)
    # without a budget nothing stops it
    r = lm_quality(FakeLM(2), wins, ref, max_loss=None, screen_windows=4, full=True)
    assert not r["early_rejected"] and r["n_windows"] == 6


def test_the_last_screen_window_can_reject_too():
    base, wins = FakeLM(1), _windows()
    ref = lm_reference(base, wins)
    r = lm_quality(FakeLM(2), wins, ref, max_loss=0.1, screen_windows=1, full=False)
    assert r["early_rejected"] and r["n_windows"] == 1


def test_summary_of_cached_nlls_runs_nothing():
    wins = _windows()
    ref = lm_reference(FakeLM(1), wins)
    s = lm_summary(ref[:3], ref, 8)
    assert s["n_windows"] == 3 and s["quality_loss"] == 0.0 and not s["early_rejected"]


class FakeClassifier:
    def __init__(self, wrong_every: int):
        self.wrong_every = wrong_every

    def classify(self, texts):
        out = torch.zeros(len(texts), 2)
        for i, t in enumerate(texts):
            label = int(t) % 2
            if self.wrong_every and int(t) % self.wrong_every == 0:
                label = 1 - label
            out[i, label] = 1.0
        return out


class Row:
    def __init__(self, i):
        self.text, self.label = str(i), i % 2


def test_classifier_accuracy_drop_and_early_rejection():
    rows = [Row(i) for i in range(1, 129)]
    base = [True] * len(rows)
    ok = cls_quality(FakeClassifier(0), rows, base, 0.05, screen_rows=64)
    assert ok["n_rows"] == 128 and ok["quality_loss"] == 0.0 and ok["accuracy"] == 1.0
    bad = cls_quality(FakeClassifier(2), rows, base, 0.05, screen_rows=64)
    assert bad["early_rejected"] and bad["n_rows"] == 32 and bad["quality_loss"] == pytest.approx(0.5)
